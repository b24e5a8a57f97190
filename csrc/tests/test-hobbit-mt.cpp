// HOBBIT: the expert cache's shared state under concurrent use, for ThreadSanitizer.
//
// The main thread generates with a small expert budget (constant eviction and reloads) while
// a second thread reads the statistics and changes the policy, as a UI or the Python driver
// would. Usage: test-hobbit-mt MODEL.gguf BUDGET_BYTES [N_THREADS]
//
// Under ThreadSanitizer run it with one compute thread: ggml's CPU threadpool hands work over
// with fences that TSan does not model, and reports races in stock ops (flash attention).

#include "llama.h"
#include "llama-hobbit.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf BUDGET_BYTES\n", argv[0]);
        return 2;
    }
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
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx     = 256;
    cp.n_batch   = 32;
    cp.n_threads = cp.n_threads_batch = argc > 3 ? atoi(argv[3]) : 1;
    llama_context * ctx = llama_init_from_model(model, cp);

    std::atomic<bool> done{false};
    std::thread watcher([&]() {
        uint64_t polls = 0;
        while (!done.load()) {
            llama_hobbit_stats s = llama_hobbit_get_stats(model);
            llama_hobbit_policy p = llama_hobbit_get_policy(model);
            p.hi_threshold = (polls++ % 2) ? 0.5f : 0.7f;
            llama_hobbit_set_policy(model, p);
            (void) s;
        }
    });

    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens(64);
    const char * prompt = "The quick brown fox jumps over the lazy dog";
    const int n = llama_tokenize(vocab, prompt, (int) strlen(prompt), tokens.data(), (int) tokens.size(), true, false);
    tokens.resize(n);
    llama_batch batch = llama_batch_get_one(tokens.data(), n);
    int ok = 1;
    for (int i = 0; i < 24 && ok; ++i) {
        ok = llama_decode(ctx, batch) == 0;
        const float * logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < llama_vocab_n_tokens(vocab); ++t) {
            best = logits[t] > logits[best] ? t : best;
        }
        tokens.assign(1, best);
        batch = llama_batch_get_one(tokens.data(), 1);
    }
    done = true;
    watcher.join();

    const llama_hobbit_stats s = llama_hobbit_get_stats(model);
    const bool consistent = s.routes_total == s.hits_hi + s.hits_lo + s.loads_hi + s.loads_lo + s.skipped;
    printf("routes %llu, loads %llu hi %llu lo, %s\n", (unsigned long long) s.routes_total,
            (unsigned long long) s.loads_hi, (unsigned long long) s.loads_lo, ok && consistent ? "OK" : "FAIL");

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return ok && consistent ? 0 : 1;
}
