// HOBBIT's GPU tier, checked and measured with the C API alone (no Python needed on a GPU box).
//
//   hobbit-gpu check MODEL NGL BUDGET [ATTEMPTS] [key=value ...]
//       Load MODEL with -ngl NGL (BUDGET 0: not in HOBBIT mode; else hobbit.budget_bytes, in
//       bytes or as N% of the file's hi expert bytes, plus
//       the hobbit.* kv overrides given: an int value, or a string; policy.FIELD=value sets a
//       policy field after the load, as bench's rows do), generate 16 tokens greedily
//       from a short and from a ~1000-token prompt, ATTEMPTS times (default 1). Prints one line
//       per generation (`gen ATTEMPT short|long ok: ids...` or `... error: message`) and one
//       `stats` line; exits 1 if the counters disagree with each other, the cache's memory
//       exceeds the budget, or the tier is not the one NGL asks for (the GPU when NGL > 0).
//
//   hobbit-gpu bench MIXED.gguf PLAIN_HI.gguf BUDGET_FRACTION [N_GEN] [RUNS] [THREADS]
//       Decode and prefill speed of stock llama.cpp's ways to run a MoE with experts offloaded
//       and of HOBBIT's GPU tier, all in this process on one prompt, with each row's quality
//       against all-hi on the GPU (B-resident): every row decodes the tokens B-resident
//       generated (teacher forcing), and top-1 agreement and KL divergence of each step's
//       distribution are taken against B-resident's. Prints a markdown table (medians of RUNS
//       runs after one warm-up run).
//       HOBBIT_BENCH_ROWS="a;b": only the rows whose names contain one of these (and B-resident,
//       the reference; "-": no other). HOBBIT_BENCH_EXTRA="name|key=value,...|threads;...": rows of the mixed
//       model added at the end, with the budget (unless they give one), the hobbit.* kv overrides
//       given, and policy.* fields (hi_threshold, skip_threshold, upgrade_threshold,
//       prefetch_width, prefetch_depth, cpu_compute) set after the load.
//       HOBBIT_BENCH_INTERLEAVE=1: the RUNS timed runs of each row are taken in RUNS rounds over
//       all the rows (each a fresh load, a warm-up and one run), so that drift of the machine's
//       speed while the bench runs hits every row alike.

#include "llama.h"
#include "llama-hobbit.h"
#include "ggml.h"
#include "ggml-backend.h"
#include "gguf.h"

#include "hobbit-median.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <string>
#include <vector>

namespace {

const char * SHORT_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play";

std::string long_prompt() {
    std::string s;
    for (int i = 0; i < 40; ++i) {
        s += "The little dog ran to the park with his friend, and they played with a big red ball all day. ";
    }
    return s;
}

struct kv_list {
    std::vector<llama_model_kv_override> kv;

    void add_int(const char * key, int64_t v) {
        llama_model_kv_override o = {};
        snprintf(o.key, sizeof(o.key), "%s", key);
        o.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
        o.val_i64 = v;
        kv.push_back(o);
    }
    void add_str(const char * key, const char * v) {
        llama_model_kv_override o = {};
        snprintf(o.key, sizeof(o.key), "%s", key);
        o.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
        snprintf(o.val_str, sizeof(o.val_str), "%s", v);
        kv.push_back(o);
    }
    // key=value: an integer if it parses as one, else a string
    void add(const std::string & arg) {
        const size_t eq = arg.find('=');
        const std::string key = arg.substr(0, eq), val = eq == std::string::npos ? "" : arg.substr(eq + 1);
        char * end = nullptr;
        const long long i = strtoll(val.c_str(), &end, 10);
        if (!val.empty() && *end == '\0') {
            add_int(key.c_str(), i);
        } else {
            add_str(key.c_str(), val.c_str());
        }
    }
    const llama_model_kv_override * data() {
        if (kv.empty()) {
            return nullptr;
        }
        kv.push_back({}); // terminator: empty key
        return kv.data();
    }
};

std::vector<llama_token> tokenize(const llama_model * model, const std::string & text) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> t(text.size() + 16);
    const int n = llama_tokenize(vocab, text.c_str(), (int) text.size(), t.data(), (int) t.size(), true, false);
    t.resize(n > 0 ? n : 0);
    return t;
}

llama_context * new_context(llama_model * model, int n_threads, int n_ctx) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx     = n_ctx;
    cp.n_batch   = 512;
    cp.n_ubatch  = 512;
    cp.n_threads = cp.n_threads_batch = n_threads;
    return llama_init_from_model(model, cp);
}

// decode `tokens` in batches of up to 512; false (with the error printed) on failure
bool prefill(llama_context * ctx, std::vector<llama_token> & tokens, std::string & err) {
    for (size_t i = 0; i < tokens.size(); i += 512) {
        const int n = (int) std::min<size_t>(512, tokens.size() - i);
        if (llama_decode(ctx, llama_batch_get_one(tokens.data() + i, n)) != 0) {
            err = llama_hobbit_last_error();
            return false;
        }
    }
    return true;
}

llama_token argmax(const float * logits, int n_vocab) {
    llama_token best = 0;
    for (llama_token t = 1; t < n_vocab; ++t) {
        best = logits[t] > logits[best] ? t : best;
    }
    return best;
}

struct expert_bytes {
    int      n_moe_layers = 0;
    uint64_t total = 0;             // level 0 (hi) routed expert bytes
    std::vector<uint64_t> by_layer; // [il]
};

expert_bytes hi_expert_bytes(const char * path) {
    expert_bytes out;
    gguf_init_params params = { /*.no_alloc =*/ true, /*.ctx =*/ nullptr };
    gguf_context * g = gguf_init_from_file(path, params);
    if (!g) {
        return out;
    }
    static const std::regex re(R"(^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$)");
    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
        std::cmatch m;
        if (std::regex_match(gguf_get_tensor_name(g, i), m, re)) {
            const int il = atoi(m[1].str().c_str());
            if ((int) out.by_layer.size() <= il) {
                out.by_layer.resize(il + 1, 0);
            }
            out.by_layer[il] += gguf_get_tensor_size(g, i);
            out.total += gguf_get_tensor_size(g, i);
        }
    }
    for (uint64_t b : out.by_layer) {
        out.n_moe_layers += b > 0 ? 1 : 0;
    }
    gguf_free(g);
    return out;
}

llama_token argmax_of(const std::vector<double> & v) {
    return (llama_token) (std::max_element(v.begin(), v.end()) - v.begin());
}

// policy.FIELD=value: a field of the model's llama_hobbit_policy; false for an unknown field
bool set_policy_field(llama_hobbit_policy & p, const std::string & arg) {
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) {
        return false;
    }
    const std::string key = arg.substr(7, eq - 7);
    const double v = atof(arg.c_str() + eq + 1);
    if      (key == "hi_threshold")      { p.hi_threshold      = (float) v; }
    else if (key == "skip_threshold")    { p.skip_threshold    = (float) v; }
    else if (key == "upgrade_threshold") { p.upgrade_threshold = (float) v; }
    else if (key == "prefetch_width")    { p.prefetch_width    = (int32_t) v; }
    else if (key == "prefetch_depth")    { p.prefetch_depth    = (int32_t) v; }
    else if (key == "cpu_compute")       { p.cpu_compute       = (int32_t) v; }
    else { return false; }
    return true;
}

// sets the policy.FIELD=value fields on the model's policy; false, with the reason in err, for
// an unknown field or a policy the model refuses (or a model not in HOBBIT mode)
bool apply_policy_fields(llama_model * model, const std::vector<std::string> & fields, std::string & err) {
    llama_hobbit_policy p = llama_hobbit_get_policy(model);
    for (const std::string & f : fields) {
        if (!set_policy_field(p, f)) {
            err = "unknown field in " + f;
            return false;
        }
    }
    if (llama_hobbit_set_policy(model, p) != 0) {
        err = llama_hobbit_last_error();
        return false;
    }
    return true;
}

int cmd_check(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: hobbit-gpu check MODEL NGL BUDGET [ATTEMPTS] [key=value ...]\n");
        return 2;
    }
    const int     ngl      = atoi(argv[3]);
    // BUDGET in bytes, or N% of the file's hi expert bytes
    const std::string budget_arg = argv[4];
    const int64_t budget = budget_arg.back() == '%'
        ? int64_t(atof(budget_arg.c_str())/100.0*double(hi_expert_bytes(argv[2]).total))
        : atoll(argv[4]);
    const int     attempts = argc > 5 ? atoi(argv[5]) : 1;
    kv_list kv;
    if (budget > 0) {
        kv.add_int("hobbit.budget_bytes", budget);
    }
    std::vector<std::string> policy; // policy.FIELD=value, set after the load
    for (int i = 6; i < argc; ++i) {
        if (strncmp(argv[i], "policy.", 7) == 0) {
            policy.push_back(argv[i]);
        } else {
            kv.add(argv[i]);
        }
    }
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = ngl;
    mp.kv_overrides = kv.data();
    llama_model * model = llama_model_load_from_file(argv[2], mp);
    if (!model) {
        printf("load error: %s\n", llama_hobbit_last_error());
        return 1;
    }
    std::string policy_err;
    if (!policy.empty() && !apply_policy_fields(model, policy, policy_err)) {
        printf("policy error: %s\n", policy_err.c_str());
        llama_model_free(model);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const std::string prompts[2] = { SHORT_PROMPT, long_prompt() };
    const char * names[2] = { "short", "long" };
    for (int a = 0; a < attempts; ++a) {
        for (int p = 0; p < 2; ++p) {
            llama_context * ctx = new_context(model, 4, 2048); // the long prompt is ~1100 tokens
            std::vector<llama_token> tokens = tokenize(model, prompts[p]);
            std::vector<llama_token> out;
            std::string err;
            bool ok = prefill(ctx, tokens, err);
            for (int i = 0; ok && i < 16; ++i) {
                llama_token next = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
                out.push_back(next);
                if (llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
                    err = llama_hobbit_last_error();
                    ok = false;
                }
            }
            printf("gen %d %s %s:", a, names[p], ok ? "ok" : "error");
            if (ok) {
                for (llama_token t : out) {
                    printf(" %d", t);
                }
            } else {
                printf(" %s", err.empty() ? "llama_decode failed" : err.c_str());
            }
            printf("\n");
            fflush(stdout);
            llama_free(ctx);
        }
    }
    bool good = true;
    if (budget > 0) {
        const llama_hobbit_stats s = llama_hobbit_get_stats(model);
        const uint64_t routes = s.hits_hi + s.hits_lo + s.loads_hi + s.loads_lo + s.skipped + s.cpu_hi + s.cpu_lo;
        const int want_tier = ngl > 0 ? 1 : 0;
        printf("stats: tier %d%s%s, routes %llu = hits %llu/%llu + loads %llu/%llu + skipped %llu + cpu %llu/%llu, "
               "%.1f MiB moved, host tier %.1f MiB, %.1f MiB read from the file, slots %.1f MiB (peak %.1f) "
               "of a %.1f MiB budget, %llu prefetches (%llu used), %llu failed loads, warm %llu/%llu, split %llu\n",
               s.tier, s.unified ? " (unified memory)" : "", s.resident ? " (resident)" : "",
               (unsigned long long) s.routes_total,
               (unsigned long long) s.hits_hi, (unsigned long long) s.hits_lo, (unsigned long long) s.loads_hi,
               (unsigned long long) s.loads_lo, (unsigned long long) s.skipped, (unsigned long long) s.cpu_hi,
               (unsigned long long) s.cpu_lo, s.bytes_loaded/1048576.0, s.host_tier_bytes/1048576.0,
               s.bytes_read/1048576.0, s.cache_capacity_bytes/1048576.0, s.cache_peak_bytes/1048576.0,
               s.budget_bytes/1048576.0, (unsigned long long) s.prefetch_issued,
               (unsigned long long) s.prefetch_used, (unsigned long long) s.failed_loads,
               (unsigned long long) s.warm_posted, (unsigned long long) s.warm_used, (unsigned long long) s.cpu_split);
        if (s.cpu_split > s.loads_hi + s.loads_lo) {
            printf("FAIL: more split routes than loads\n");
            good = false;
        }
        // the routes of a wave whose load failed are seen but not served
        const bool adds_up = routes == s.routes_total || (s.failed_loads > 0 && routes < s.routes_total);
        if (!adds_up || s.routes_total == 0) {
            printf("FAIL: routes do not add up\n");
            good = false;
        }
        if (s.cache_capacity_bytes > s.budget_bytes || s.cache_peak_bytes > s.cache_capacity_bytes) {
            printf("FAIL: expert memory over the budget\n");
            good = false;
        }
        if (s.tier != want_tier) {
            printf("FAIL: tier %d, expected %d\n", s.tier, want_tier);
            good = false;
        }
    }
    llama_model_free(model);
    return good ? 0 : 1;
}

// ---- bench ----------------------------------------------------------------------------------

struct row_result {
    std::vector<double> decode_tps, prefill_tps;
    double top1 = 0.0, kl = 0.0;
    std::string note;               // the last run's decode stats
    std::vector<std::string> notes; // every run's, in order (interleaved: one a round)
    bool ok = true;
};

// the fields of s (nullptr: none) between separators, empty ones left out unless keep_empty
// (fields that stand by their place, as in "name||threads")
std::vector<std::string> split(const char * s, char sep, bool keep_empty = false) {
    std::vector<std::string> out;
    std::string cur;
    for (; s && *s; ++s) {
        if (*s == sep) {
            if (keep_empty || !cur.empty()) {
                out.push_back(cur);
            }
            cur.clear();
        } else {
            cur += *s;
        }
    }
    if (keep_empty || !cur.empty()) {
        out.push_back(cur);
    }
    return out;
}

// log-softmax of logits
std::vector<double> log_probs(const float * logits, int n) {
    double mx = logits[0];
    for (int i = 1; i < n; ++i) {
        mx = std::max<double>(mx, logits[i]);
    }
    double sum = 0.0;
    for (int i = 0; i < n; ++i) {
        sum += std::exp(logits[i] - mx);
    }
    std::vector<double> lp(n);
    const double lse = mx + std::log(sum);
    for (int i = 0; i < n; ++i) {
        lp[i] = logits[i] - lse;
    }
    return lp;
}

struct reference {
    std::vector<llama_token>         prompt;
    std::vector<llama_token>         tokens;    // greedy continuation by B-resident
    std::vector<std::vector<double>> log_probs; // B-resident's distribution before each of them
};

// one configuration: a warm-up run and `runs` timed runs, each a fresh context that prefills the
// prompt then decodes the reference tokens; with `make_ref`, the first run's greedy tokens and
// distributions become the reference instead
row_result run_row(const char * path, int ngl, kv_list & kv, std::vector<llama_model_tensor_buft_override> & ot,
                   const std::vector<std::string> & policy, reference & ref, bool make_ref, int n_gen, int runs,
                   int n_threads) {
    row_result res;
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = ngl;
    mp.kv_overrides = kv.data();
    if (!ot.empty()) {
        ot.push_back({ nullptr, nullptr });
        mp.tensor_buft_overrides = ot.data();
    }
    llama_model * model = llama_model_load_from_file(path, mp);
    if (!model) {
        res.ok = false;
        res.note = std::string("load failed: ") + llama_hobbit_last_error();
        return res;
    }
    std::string policy_err;
    if (!policy.empty() && !apply_policy_fields(model, policy, policy_err)) {
        res.ok = false;
        res.note = "bad policy override";
        llama_model_free(model);
        return res;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    double top1 = 0.0, kl = 0.0;
    int counted = 0;
    for (int r = 0; r <= runs && res.ok; ++r) {
        llama_context * ctx = new_context(model, n_threads, 1024);
        std::vector<llama_token> prompt = ref.prompt;
        std::string err;
        const int64_t t0 = ggml_time_us();
        if (!prefill(ctx, prompt, err)) {
            res.ok = false;
            res.note = "prefill failed: " + err;
            llama_free(ctx);
            break;
        }
        llama_synchronize(ctx);
        const int64_t t1 = ggml_time_us();
        if (llama_hobbit_active(model)) {
            llama_hobbit_reset_stats(model); // the notes describe the last run's decode
        }
        // the logits of each step are kept and scored after the timing: the scoring (a softmax
        // over the vocabulary) is not the decode's time
        const float * logits = llama_get_logits_ith(ctx, -1);
        const int n = make_ref ? n_gen : (int) ref.tokens.size();
        std::vector<std::vector<float>> seen;
        for (int i = 0; i < n; ++i) {
            if (r == 0 || !make_ref) {
                seen.emplace_back(logits, logits + n_vocab);
            }
            if (make_ref && r == 0) {
                ref.tokens.push_back(argmax(logits, n_vocab));
            }
            llama_token next = ref.tokens[i];
            if (llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
                res.ok = false;
                res.note = std::string("decode failed: ") + llama_hobbit_last_error();
                break;
            }
            logits = llama_get_logits_ith(ctx, -1);
        }
        const int64_t t2 = ggml_time_us();
        for (size_t i = 0; i < seen.size(); ++i) {
            if (make_ref && r == 0) {
                ref.log_probs.push_back(log_probs(seen[i].data(), n_vocab));
            } else if (r > 0 && !make_ref) {
                const std::vector<double> lp = log_probs(seen[i].data(), n_vocab);
                double k = 0.0;
                for (int v = 0; v < n_vocab; ++v) {
                    k += std::exp(ref.log_probs[i][v])*(ref.log_probs[i][v] - lp[v]);
                }
                kl   += k;
                top1 += argmax(seen[i].data(), n_vocab) == argmax_of(ref.log_probs[i]) ? 1.0 : 0.0;
                counted++;
            }
        }
        if (r > 0 && res.ok) {
            res.prefill_tps.push_back(prompt.size()/((t1 - t0)/1e6));
            res.decode_tps.push_back(n/((t2 - t1)/1e6));
        }
        llama_free(ctx);
    }
    if (llama_hobbit_active(model)) {
        const llama_hobbit_stats s = llama_hobbit_get_stats(model);
        char buf[1024];
        const double per = 1.0/std::max(1, n_gen);
        const double routes = std::max<double>(1.0, double(s.routes_total));
        snprintf(buf, sizeof(buf), "decode: %s %.3f, CPU %.3f, split %.3f, skipped %.3f, %.1f MiB %s, %.1f MiB read by the CPU path and "
                 "%.2f ms stalled per token, "
                 "%.2f ms between layers (%.2f until the host had a layer's inputs) and %.2f on CPU experts per token, "
                 "%.1f GB/s a stream, planner's copy %.1f / CPU %.1f GB/s (CPU experts op %.1f GB/s, >= %d threads), %llu prefetches (%llu used), "
                 "%llu layers warmed (%llu used), decode passes at "
                 "depth 0-3 %llu/%llu/%llu/%llu; slots %.0f MiB%s",
                 s.tier ? "VRAM hits" : "hits", double(s.hits_hi + s.hits_lo)/routes, double(s.cpu_hi + s.cpu_lo)/routes,
                 double(s.cpu_split)/routes, double(s.skipped)/routes,
                 s.bytes_loaded/1048576.0*per, s.unified ? "read" : (s.tier ? "copied" : "read"), s.cpu_bytes/1048576.0*per,
                 s.load_stall_ms*per,
                 s.between_ms*per, s.gpu_gap_ms*per, s.cpu_ms*per,
                 s.read_ms > 0 ? s.bytes_loaded/(s.read_ms*1e6) : 0.0, s.copy_gbps, s.cpu_gbps,
                 s.cpu_ms > 0 ? s.cpu_bytes/(s.cpu_ms*1e6) : 0.0,
                 s.cpu_threads_min,
                 (unsigned long long) s.prefetch_issued, (unsigned long long) s.prefetch_used,
                 (unsigned long long) s.warm_posted, (unsigned long long) s.warm_used,
                 (unsigned long long) s.passes_at_depth[0], (unsigned long long) s.passes_at_depth[1],
                 (unsigned long long) s.passes_at_depth[2], (unsigned long long) s.passes_at_depth[3],
                 s.cache_capacity_bytes/1048576.0, s.unified ? " (pinned host memory)" : "");
        res.note = buf;
        res.notes.push_back(buf);
    }
    res.top1 = counted ? top1/counted : 1.0;
    res.kl   = counted ? kl/counted : 0.0;
    llama_model_free(model);
    return res;
}

int cmd_bench(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: hobbit-gpu bench MIXED.gguf PLAIN_HI.gguf BUDGET_FRACTION [N_GEN] [RUNS] [THREADS]\n");
        return 2;
    }
    const char * mixed = argv[2];
    const char * plain = argv[3];
    const double frac  = atof(argv[4]);
    const int n_gen    = argc > 5 ? atoi(argv[5]) : 128;
    const int runs     = argc > 6 ? atoi(argv[6]) : 3;
    const int threads  = argc > 7 ? atoi(argv[7]) : 16;

    const expert_bytes eb = hi_expert_bytes(plain);
    if (eb.total == 0) {
        fprintf(stderr, "hobbit-gpu: no routed experts in %s\n", plain);
        return 2;
    }
    const uint64_t budget = uint64_t(frac*double(eb.total));
    // --n-cpu-moe: the experts of the last k MoE layers in VRAM, k as many as the budget holds
    int k = 0;
    uint64_t used = 0;
    for (int il = (int) eb.by_layer.size() - 1; il >= 0; --il) {
        if (eb.by_layer[il] == 0) {
            continue;
        }
        if (used + eb.by_layer[il] > budget) {
            break;
        }
        used += eb.by_layer[il];
        k++;
    }
    ggml_backend_buffer_type_t cpu = ggml_backend_dev_buffer_type(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
    std::string ncmoe_pattern = "blk\\.(";
    int n_cpu_layers = 0;
    for (int il = 0, seen = 0; il < (int) eb.by_layer.size(); ++il) {
        if (eb.by_layer[il] > 0 && seen++ < eb.n_moe_layers - k) {
            ncmoe_pattern += (n_cpu_layers++ ? "|" : "") + std::to_string(il);
        }
    }
    ncmoe_pattern += ")\\.ffn_(up|down|gate)_exps";

    llama_model * tok_model = nullptr;
    {
        llama_model_params mp = llama_model_default_params();
        mp.vocab_only = true;
        tok_model = llama_model_load_from_file(plain, mp);
    }
    reference ref;
    ref.prompt = tokenize(tok_model, long_prompt().substr(0, 1200));
    llama_model_free(tok_model);

    printf("hi expert bytes %.1f MiB in %d MoE layers; budget %.0f%% = %.1f MiB; B-n-cpu-moe keeps %d layer(s) of "
           "experts in VRAM (%.1f MiB); prompt %zu tokens, %d decoded, medians of %d runs after a warm-up\n\n",
           eb.total/1048576.0, eb.n_moe_layers, 100*frac, budget/1048576.0, k, used/1048576.0, ref.prompt.size(),
           n_gen, runs);
    fflush(stdout);

    struct row {
        std::string name;
        const char * path;
        std::vector<std::string> kv; // hobbit.* kv overrides, and policy.* fields set after the load
        std::vector<llama_model_tensor_buft_override> ot;
        int threads = 0; // 0: THREADS (resolved before the rows run)
    };
    const std::string b = "hobbit.budget_bytes=" + std::to_string(budget);
    std::vector<row> rows = {
        { "B-resident (-ngl 99)", plain, {}, {} },
        { "B-cpu-moe (-ot exps=CPU)", plain, {}, { { "\\.ffn_(up|down|gate)_exps", cpu } } },
        { "B-n-cpu-moe", plain, {}, { { ncmoe_pattern.c_str(), cpu } } },
        { "B-lru-gpu (hi only, LRU, no prefetch, no CPU compute), -t 4", mixed, { b, "hobbit.lo_type=none",
          "hobbit.policy=lru", "hobbit.prefetch_depth=0", "hobbit.cpu_compute=0" }, {}, 4 },
        { "B-lru-gpu, -t 16", mixed, { b, "hobbit.lo_type=none", "hobbit.policy=lru", "hobbit.prefetch_depth=0",
          "hobbit.cpu_compute=0" }, {}, 16 },
        { "HOBBIT-gpu, no planner, no prefetch, -t 4", mixed, { b, "hobbit.cpu_compute=0", "hobbit.prefetch_depth=0" }, {}, 4 },
        { "HOBBIT-gpu, planner, no prefetch, -t 4", mixed, { b, "hobbit.prefetch_depth=0" }, {}, 4 },
        { "HOBBIT-gpu, planner, no prefetch, -t 8", mixed, { b, "hobbit.prefetch_depth=0" }, {}, 8 },
        { "HOBBIT-gpu, planner, no prefetch, -t 16", mixed, { b, "hobbit.prefetch_depth=0" }, {}, 16 },
        { "HOBBIT-gpu, planner, auto prefetch, -t 8", mixed, { b }, {}, 8 },
        // the default of hobbit_py and the CLI: a thread per physical core (THREADS here)
        { "HOBBIT-gpu, planner, auto prefetch, -t " + std::to_string(threads) + " (the default threads)", mixed, { b }, {},
          threads },
        { "HOBBIT-gpu, planner, auto prefetch, misses split (hobbit.split=1), -t " + std::to_string(threads), mixed,
          { b, "hobbit.split=1" }, {}, threads },
        { "HOBBIT-gpu, planner, auto prefetch, copies by the I/O threads, -t 8", mixed, { b, "hobbit.graph_copies=0" },
          {}, 8 },
        { "HOBBIT-gpu, unified memory forced (diagnostic: the GPU reads pinned host slots), -t 8", mixed,
          { b, "hobbit.unified=1", "hobbit.prefetch_depth=0" }, {}, 8 },
        { "HOBBIT-gpu, every expert fits (diagnostic), -t 4", mixed,
          { "hobbit.budget_bytes=" + std::to_string(4*eb.total) }, {}, 4 },
        { "HOBBIT-gpu, every expert fits, routed (diagnostic: hobbit.resident=0), -t 4", mixed,
          { "hobbit.budget_bytes=" + std::to_string(4*eb.total), "hobbit.resident=0" }, {}, 4 },
    };
    // HOBBIT_BENCH_ROWS: B-resident (the reference) and the rows named
    if (const char * sel = getenv("HOBBIT_BENCH_ROWS")) {
        const std::vector<std::string> want = strcmp(sel, "-") == 0 ? std::vector<std::string>() : split(sel, ';');
        std::vector<row> kept = { rows[0] };
        for (size_t i = 1; i < rows.size(); ++i) {
            for (const std::string & w : want) {
                if (rows[i].name.find(w) != std::string::npos) {
                    kept.push_back(rows[i]);
                    break;
                }
            }
        }
        rows = kept;
    }
    // HOBBIT_BENCH_EXTRA: rows of the mixed model at the budget, "name|kv,kv|threads;..."
    for (const std::string & spec : split(getenv("HOBBIT_BENCH_EXTRA"), ';')) {
        const std::vector<std::string> f = split(spec.c_str(), '|', /*keep_empty =*/ true);
        row x = { f[0], mixed, {}, {}, f.size() > 2 ? atoi(f[2].c_str()) : 0 };
        bool own_budget = false;
        for (const std::string & k : f.size() > 1 ? split(f[1].c_str(), ',') : std::vector<std::string>()) {
            x.kv.push_back(k);
            own_budget = own_budget || k.rfind("hobbit.budget_bytes=", 0) == 0;
        }
        if (!own_budget) {
            x.kv.insert(x.kv.begin(), b);
        }
        rows.push_back(x);
    }
    printf("| configuration | decode tok/s | x B-cpu-moe | x B-n-cpu-moe | x B-lru-gpu | prefill tok/s | "
           "top-1 vs all-hi | KL vs all-hi | notes |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    const char * ref_names[3] = { "B-cpu-moe", "B-n-cpu-moe", "B-lru-gpu (" };
    double ref_decode[3] = {}; // the first row of each of those names
    auto ratio = [](double d, double ref) {
        char b[32];
        snprintf(b, sizeof(b), "%.2fx", d/ref);
        return ref > 0 ? std::string(b) : std::string();
    };
    // HOBBIT_BENCH_INTERLEAVE=1: RUNS rounds over all the rows, each round a fresh load, a
    // warm-up and one timed run per row, so that a machine whose speed drifts while the bench
    // runs drifts for every row alike; the table comes at the end
    const char * il_env = getenv("HOBBIT_BENCH_INTERLEAVE");
    const bool interleave = il_env && atoi(il_env) != 0 && runs > 1;
    const int n_rounds = interleave ? runs : 1;
    for (row & r : rows) {
        r.threads = r.threads ? r.threads : threads;
    }
    std::vector<row_result> results(rows.size());
    auto print_row = [&](size_t i, const row_result & r) {
        const double d = median(r.decode_tps);
        for (int k = 0; k < 3; ++k) {
            if (ref_decode[k] == 0.0 && rows[i].name.rfind(ref_names[k], 0) == 0) {
                ref_decode[k] = d;
            }
        }
        printf("| %s | %.1f | %s | %s | %s | %.1f | %.4f | %.5f | %s%s |\n", rows[i].name.c_str(), d,
               ratio(d, ref_decode[0]).c_str(), ratio(d, ref_decode[1]).c_str(), ratio(d, ref_decode[2]).c_str(),
               median(r.prefill_tps), r.top1, r.kl, r.ok ? "" : "FAILED ", r.note.c_str());
        printf("<!-- %s runs at -t %d%s: decode", rows[i].name.c_str(), rows[i].threads, interleave ? ", one a round" : "");
        for (double v : r.decode_tps) {
            printf(" %.1f", v);
        }
        printf(", prefill");
        for (double v : r.prefill_tps) {
            printf(" %.1f", v);
        }
        printf(" -->\n");
        for (size_t k = 0; k < r.notes.size(); ++k) {
            printf("<!-- %s run %zu: %s -->\n", rows[i].name.c_str(), k + 1, r.notes[k].c_str());
        }
        fflush(stdout);
    };
    for (int round = 0; round < n_rounds; ++round) {
        for (size_t i = 0; i < rows.size(); ++i) {
            kv_list kv;
            std::vector<std::string> policy;
            for (const auto & s : rows[i].kv) {
                if (s.rfind("policy.", 0) == 0) {
                    policy.push_back(s);
                } else {
                    kv.add(s);
                }
            }
            std::vector<llama_model_tensor_buft_override> ot = rows[i].ot;
            const row_result r = run_row(rows[i].path, 99, kv, ot, policy, ref, i == 0 && round == 0, n_gen,
                                         interleave ? 1 : runs, rows[i].threads);
            row_result & acc = results[i];
            acc.decode_tps.insert(acc.decode_tps.end(), r.decode_tps.begin(), r.decode_tps.end());
            acc.prefill_tps.insert(acc.prefill_tps.end(), r.prefill_tps.begin(), r.prefill_tps.end());
            acc.top1 += r.top1/n_rounds; // each round scores the same tokens
            acc.kl   += r.kl/n_rounds;
            acc.ok    = acc.ok && r.ok;
            acc.note  = r.note; // the last run's decode
            acc.notes.insert(acc.notes.end(), r.notes.begin(), r.notes.end());
            if (!interleave) {
                print_row(i, acc);
            }
        }
    }
    for (size_t i = 0; interleave && i < rows.size(); ++i) {
        print_row(i, results[i]);
    }
    return 0;
}

} // namespace

int main(int argc, char ** argv) {
    llama_backend_init();
    llama_log_set([](ggml_log_level level, const char * text, void *) {
        if (level >= GGML_LOG_LEVEL_WARN || getenv("HOBBIT_GPU_VERBOSE")) {
            fputs(text, stderr);
        }
    }, nullptr);
    int rc = 2;
    if (argc > 1 && strcmp(argv[1], "check") == 0) {
        rc = cmd_check(argc, argv);
    } else if (argc > 1 && strcmp(argv[1], "bench") == 0) {
        rc = cmd_bench(argc, argv);
    } else {
        fprintf(stderr, "usage: hobbit-gpu check|bench ... (see the header of csrc/tools/hobbit-gpu.cpp)\n");
    }
    llama_backend_free();
    return rc;
}
