// HOBBIT: several contexts on one model at once, for correctness and for ThreadSanitizer.
//
// Two contexts share one HOBBIT model with a small expert budget (constant eviction and
// reloads, and waits for room the other context pins). Each generates greedily from its own
// prompt, first alone, then both at the same time on two threads while a third thread reads
// the statistics and rewrites the policy; the concurrent tokens must equal the ones alone.
// Every expert is served at hi (hi_threshold 0), so what the cache holds changes only speed.
//
// Usage: test-hobbit-mt MODEL.gguf BUDGET_BYTES [N_THREADS] [TRIALS]
//
// Under ThreadSanitizer run it with one compute thread: ggml's CPU threadpool hands work over
// with fences that TSan does not model, and reports races in stock ops (flash attention).

#include "llama.h"
#include "llama-hobbit.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

static std::vector<llama_token> generate(llama_model * model, const char * prompt, int n_threads, int n_gen, bool & ok) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx     = 256;
    cp.n_batch   = 32;
    cp.n_ubatch  = 32;
    cp.n_threads = cp.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    std::vector<llama_token> out;
    if (!ctx) {
        ok = false;
        return out;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens(128);
    const int n = llama_tokenize(vocab, prompt, (int) strlen(prompt), tokens.data(), (int) tokens.size(), true, false);
    tokens.resize(n > 0 ? n : 0);
    llama_batch batch = llama_batch_get_one(tokens.data(), (int32_t) tokens.size());
    llama_token next = 0;
    for (int i = 0; i < n_gen; ++i) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "decode failed: %s\n", llama_hobbit_last_error());
            ok = false;
            break;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        next = 0;
        for (llama_token t = 1; t < llama_vocab_n_tokens(vocab); ++t) {
            next = logits[t] > logits[next] ? t : next;
        }
        out.push_back(next);
        batch = llama_batch_get_one(&next, 1);
    }
    llama_free(ctx);
    return out;
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf BUDGET_BYTES [N_THREADS] [TRIALS]\n", argv[0]);
        return 2;
    }
    const int n_threads = argc > 3 ? atoi(argv[3]) : 1;
    const int trials    = argc > 4 ? atoi(argv[4]) : 3;
    const int n_gen     = 24;
    llama_backend_init();

    llama_model_kv_override kv[2] = {};
    strncpy(kv[0].key, "hobbit.budget_bytes", sizeof(kv[0].key) - 1);
    kv[0].tag     = LLAMA_KV_OVERRIDE_TYPE_INT;
    kv[0].val_i64 = atoll(argv[2]);

    llama_model_params mp = llama_model_default_params();
    mp.kv_overrides = kv;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model || !llama_hobbit_active(model)) {
        fprintf(stderr, "failed to load %s in HOBBIT mode: %s\n", argv[1], llama_hobbit_last_error());
        return 1;
    }
    llama_hobbit_policy forced_hi = llama_hobbit_get_policy(model);
    forced_hi.hi_threshold = 0.0f;
    forced_hi.upgrade_threshold = 0.0f;
    llama_hobbit_set_policy(model, forced_hi);

    const char * prompts[2] = {
        "The quick brown fox jumps over the lazy dog, and then it",
        "In the beginning the package manager resolved every dependency of the",
    };
    bool ok = true;
    std::vector<llama_token> alone[2];
    for (int i = 0; i < 2; ++i) {
        alone[i] = generate(model, prompts[i], n_threads, n_gen, ok);
    }

    int differ = 0;
    for (int trial = 0; trial < trials && ok; ++trial) {
        std::atomic<bool> done{false};
        std::thread watcher([&]() {
            while (!done.load()) {
                llama_hobbit_stats s = llama_hobbit_get_stats(model);
                llama_hobbit_policy p = llama_hobbit_get_policy(model);
                llama_hobbit_set_policy(model, p); // rewritten, unchanged: decisions stay the same
                (void) s;
                std::this_thread::yield();
            }
        });
        std::vector<llama_token> together[2];
        bool ok_t[2] = { true, true };
        std::thread a([&]() { together[0] = generate(model, prompts[0], n_threads, n_gen, ok_t[0]); });
        std::thread b([&]() { together[1] = generate(model, prompts[1], n_threads, n_gen, ok_t[1]); });
        a.join();
        b.join();
        done = true;
        watcher.join();
        ok = ok && ok_t[0] && ok_t[1];
        for (int i = 0; i < 2; ++i) {
            differ += together[i] != alone[i] ? 1 : 0;
        }
    }

    const llama_hobbit_stats s = llama_hobbit_get_stats(model);
    const bool consistent = s.routes_total == s.hits_hi + s.hits_lo + s.loads_hi + s.loads_lo + s.skipped;
    printf("routes %llu, loads %llu hi %llu lo, %llu prefetches, waves %llu for %llu layer evaluations, "
           "%d of %d concurrent generations differ from alone: %s\n",
            (unsigned long long) s.routes_total, (unsigned long long) s.loads_hi, (unsigned long long) s.loads_lo,
            (unsigned long long) s.prefetch_issued, (unsigned long long) s.n_waves, (unsigned long long) s.n_calls,
            differ, 2*trials,
            ok && consistent && differ == 0 ? "OK" : "FAIL");

    llama_model_free(model);
    llama_backend_free();
    return ok && consistent && differ == 0 ? 0 : 1;
}
