// HOBBIT at model load and context creation: reading the load-time settings (kv overrides),
// building the expert store and cache of a model, and each context's state.

#include "hobbit-hooks.h"
#include "hobbit-cache.h"
#include "hobbit-context.h"

#include "llama-impl.h"
#include "llama-model.h"
#include "llama-model-loader.h"

#include <regex>
#include <stdexcept>

namespace {

// kv override keys read at load time (they are never file keys)
constexpr const char * KV_PREFIX  = "hobbit.";
constexpr const char * KV_BUDGET  = "hobbit.budget_bytes"; // int: expert cache budget; enables HOBBIT mode
constexpr const char * KV_HI_TYPE = "hobbit.hi_type";      // str: level used as hi (default: the first)
constexpr const char * KV_LO_TYPE = "hobbit.lo_type";      // str: level used as lo (default: the last; "none": hi only)
constexpr const char * KV_DIRECT  = "hobbit.direct_io";    // int: 1 reads experts with O_DIRECT
constexpr const char * KV_IO      = "hobbit.io_threads";   // int: I/O threads reading experts
constexpr const char * KV_GPU     = "hobbit.gpu";          // int: 1 (default) experts in VRAM slots when layers are offloaded
constexpr const char * KV_HOST    = "hobbit.host_tier";    // int: GPU tier: 1 (default) every expert in pinned RAM, 0 read per copy
constexpr const char * KV_UNIFIED = "hobbit.unified";      // int: GPU tier: -1 (default) if integrated, 1 forced, 0 off
constexpr const char * KV_POLICY  = "hobbit.policy";       // str: initial eviction policy (lru, lfu, fld, least-stale, hobbit)
constexpr const char * KV_DEPTH   = "hobbit.prefetch_depth"; // int: initial prefetch depth (-1 auto, 0 off, 1..3)
constexpr const char * KV_CPU     = "hobbit.cpu_compute";  // int: initial cpu_compute (GPU tier: 1 planner, 0 copy every miss)
constexpr const char * KV_CPU_PATH = "hobbit.cpu_path";    // int: GPU tier: a decode graph's CPU path: -1 (default) auto, 0 never, 1 always
constexpr const char * KV_GRAPH_COPIES = "hobbit.graph_copies"; // int: GPU tier: 1 (default) the graph's thread queues demand copies, 0 the I/O threads
constexpr const char * KV_RESIDENT = "hobbit.resident";    // int: GPU tier: 1 (default) when every hi expert fits, each is placed once and the graph indexes them
constexpr const char * KV_SPLIT   = "hobbit.split";       // int: GPU tier: 1 the planner may split a miss between CPU and GPU, 0 (default) never
constexpr const char * KV_SPLIT_CPU = "hobbit.split_cpu_pct"; // int: GPU tier: percent of a split miss's FFN rows the CPU computes (default 50)
constexpr const char * KV_PREDICT = "hobbit.always_predict"; // int: 1 graphs apply the next layers' routers even at depth 0 (diagnostic), 0 (default) not then
constexpr const char * KV_WARM    = "hobbit.warm";        // int: GPU tier: 1 the CPU reads the next layer's predicted miss ahead (hobbit-warm.h), 2 so with its workers pinned to cores, 0 (default) not
constexpr const char * KV_TYPES   = "hobbit.expert_types"; // file key: requested types of the expert levels

const char * const KNOWN_KEYS[] = { KV_BUDGET, KV_HI_TYPE, KV_LO_TYPE, KV_DIRECT, KV_IO, KV_GPU, KV_HOST, KV_UNIFIED,
                                     KV_POLICY, KV_DEPTH, KV_CPU, KV_CPU_PATH, KV_GRAPH_COPIES, KV_RESIDENT, KV_SPLIT,
                                     KV_SPLIT_CPU, KV_PREDICT, KV_WARM };

constexpr int IO_THREADS_DEFAULT = 4; // several reads in flight: NVMe and O_DIRECT want a queue
constexpr int IO_THREADS_MAX     = 64;
const char * const PROJ_NAME[LLAMA_HOBBIT_N_PROJ] = { "gate", "up", "down" };

bool override_int(const llama_model_loader & ml, const char * key, int64_t & out) {
    auto it = ml.kv_overrides.find(key);
    if (it == ml.kv_overrides.end()) {
        return false;
    }
    if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_INT) {
        throw std::runtime_error(format("hobbit: %s must be an integer", key));
    }
    out = it->second.val_i64;
    return true;
}

bool override_str(const llama_model_loader & ml, const char * key, std::string & out) {
    auto it = ml.kv_overrides.find(key);
    if (it == ml.kv_overrides.end()) {
        return false;
    }
    if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_STR) {
        throw std::runtime_error(format("hobbit: %s must be a string", key));
    }
    out = it->second.val_str;
    return true;
}

bool arch_supported(llm_arch arch) {
    switch (arch) {
        case LLM_ARCH_LLAMA:     // Mixtral
        case LLM_ARCH_QWEN2MOE:
        case LLM_ARCH_QWEN3MOE:
        case LLM_ARCH_OLMOE:
        case LLM_ARCH_DEEPSEEK2:
        case LLM_ARCH_PHIMOE:
            return true;
        default:
            return false;
    }
}

bool is_extra_level(const std::string & name) {
    static const std::regex re(R"(^blk\.\d+\.ffn_(gate|up|down)_exps\.[a-z0-9_]+\.weight$)");
    return std::regex_match(name, re);
}

std::string tensor_name(int il, int proj, const std::string & level) {
    return level.empty()
        ? format("blk.%d.ffn_%s_exps.weight", il, PROJ_NAME[proj])
        : format("blk.%d.ffn_%s_exps.%s.weight", il, PROJ_NAME[proj], level.c_str());
}

// one expert level of the file: the suffix of its tensor names ("" for the standard tensors)
// and its label, the requested type in hobbit.expert_types
struct level_info {
    std::string suffix;
    std::string label;
};

// level 0 is the standard tensors; a plain GGUF has only that level
std::vector<level_info> file_levels(const llama_model_loader & ml) {
    std::vector<level_info> levels = { { "", "level 0" } };
    const int64_t kid = gguf_find_key(ml.metadata, KV_TYPES);
    if (kid >= 0 && gguf_get_kv_type(ml.metadata, kid) == GGUF_TYPE_ARRAY &&
            gguf_get_arr_type(ml.metadata, kid) == GGUF_TYPE_STRING) {
        for (size_t i = 0; i < gguf_get_arr_n(ml.metadata, kid); ++i) {
            const std::string type = gguf_get_arr_str(ml.metadata, kid, i);
            if (i == 0) {
                levels[0].label = type;
            } else {
                levels.push_back({ type, type });
            }
        }
    }
    return levels;
}

// the GPU whose VRAM holds the slot pools: the model's first GPU when it offloads layers to one
// and hobbit.gpu is not 0; nullptr for the CPU tier
ggml_backend_dev_t gpu_device(const llama_model & model, const llama_model_loader & ml) {
    int64_t want = 1;
    override_int(ml, KV_GPU, want);
    if (!want || model.n_gpu_layers() == 0) {
        return nullptr;
    }
    for (const llama_device & d : model.devices) {
        const auto type = ggml_backend_dev_type(d.dev);
        if (!d.is_meta && (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU)) {
            return d.dev;
        }
    }
    return nullptr;
}

// the policy a model starts with: the default, with hobbit.policy and hobbit.prefetch_depth
void initial_policy(llama_hobbit_cache & cache, const llama_model_loader & ml) {
    llama_hobbit_policy pol = cache.get_policy();
    std::string name;
    if (override_str(ml, KV_POLICY, name)) {
        static const std::pair<const char *, int> names[] = {
            { "lru", LLAMA_HOBBIT_EVICT_LRU }, { "lfu", LLAMA_HOBBIT_EVICT_LFU }, { "fld", LLAMA_HOBBIT_EVICT_FLD },
            { "least-stale", LLAMA_HOBBIT_EVICT_STALE }, { "hobbit", LLAMA_HOBBIT_EVICT_BLEND },
        };
        bool found = false;
        for (const auto & [n, ev] : names) {
            if (name == n) {
                pol.eviction = ev;
                found = true;
            }
        }
        if (!found) {
            throw std::runtime_error(format("hobbit: unknown %s %s (lru, lfu, fld, least-stale, hobbit)", KV_POLICY,
                    name.c_str()));
        }
    }
    int64_t depth = 0;
    if (override_int(ml, KV_DEPTH, depth)) {
        pol.prefetch_depth = (int32_t) depth;
    }
    int64_t cpu = 1;
    if (override_int(ml, KV_CPU, cpu)) {
        pol.cpu_compute = (int32_t) cpu;
    }
    std::string err;
    if (!cache.set_policy(pol, err)) {
        throw std::runtime_error(err);
    }
}

std::shared_ptr<llama_hobbit_cache> attach_impl(const llama_model & model, llama_model_loader & ml,
                                                const std::vector<std::string> & paths) {
    int64_t budget = -1;
    if (!override_int(ml, KV_BUDGET, budget)) {
        return nullptr;
    }
    if (paths.size() != ml.files.size() || paths[0].empty()) {
        throw std::runtime_error("hobbit: split GGUF files are not supported by the expert cache yet");
    }
    if (budget <= 0) {
        throw std::runtime_error(format("hobbit: expert budget must be positive, got %lld", (long long) budget));
    }
    if (!arch_supported(model.arch)) {
        throw std::runtime_error(format("hobbit: architecture %s is not supported by the expert cache",
                llm_arch_name(model.arch)));
    }

    const std::vector<level_info> levels = file_levels(ml);
    auto find_level = [&](const char * key, int def) {
        std::string want;
        if (!override_str(ml, key, want) || want.empty()) {
            return def;
        }
        if (want == "none") {
            return -1;
        }
        for (size_t i = 0; i < levels.size(); ++i) {
            if (levels[i].label == want) {
                return (int) i;
            }
        }
        throw std::runtime_error(format("hobbit: the file has no expert level of type %s", want.c_str()));
    };
    const int lvl_hi = find_level(KV_HI_TYPE, 0);
    const int lvl_lo = find_level(KV_LO_TYPE, levels.size() > 1 ? (int) levels.size() - 1 : -1);
    if (lvl_hi < 0) {
        throw std::runtime_error("hobbit: the hi level cannot be none");
    }

    auto cache = std::make_shared<llama_hobbit_cache>();
    cache->n_layer       = (int) model.hparams.n_layer();
    cache->n_expert      = (int) model.hparams.n_expert;
    cache->n_expert_used = (int) model.hparams.n_expert_used();
    cache->has_lo        = lvl_lo >= 0 && lvl_lo != lvl_hi;
    cache->type_name[LLAMA_HOBBIT_HI] = levels[lvl_hi].label;
    cache->type_name[LLAMA_HOBBIT_LO] = cache->has_lo ? levels[lvl_lo].label : "";
    cache->serves.assign(cache->n_layer, false);
    cache->gate_inp.assign(cache->n_layer, nullptr);
    cache->gate_inp_b.assign(cache->n_layer, nullptr);
    cache->probs_bias.assign(cache->n_layer, nullptr);

    int64_t direct_io = 0;
    override_int(ml, KV_DIRECT, direct_io);
    int64_t io_threads = IO_THREADS_DEFAULT;
    override_int(ml, KV_IO, io_threads);
    if (io_threads < 1 || io_threads > IO_THREADS_MAX) {
        throw std::runtime_error(format("hobbit: %s must be between 1 and %d, got %lld", KV_IO, IO_THREADS_MAX,
                (long long) io_threads));
    }
    cache->store.open(paths, direct_io != 0);
    cache->store.resize(cache->n_layer);

    const int n_lvl = cache->n_levels();
    const int lvl_file[2] = { lvl_hi, lvl_lo };
    ggml_type type[2][LLAMA_HOBBIT_N_PROJ] = {};
    int64_t   ne[2][LLAMA_HOBBIT_N_PROJ][2] = {};
    int n_moe_layers = 0;
    for (int il = 0; il < cache->n_layer; ++il) {
        const llama_layer & layer = model.layers[il];
        if (!layer.ffn_up_exps) {
            continue; // a dense layer
        }
        if (!layer.ffn_gate_exps || !layer.ffn_down_exps || layer.ffn_gate_up_exps ||
                layer.ffn_up_exps_b || layer.ffn_gate_exps_b || layer.ffn_down_exps_b || layer.ffn_up_exps_s ||
                model.hparams.swiglu_clamp_exp[il] != 0.0f) {
            throw std::runtime_error(format("hobbit: layer %d has an expert layout the cache does not support", il));
        }
        for (int lvl = 0; lvl < n_lvl; ++lvl) {
            for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
                const std::string name = tensor_name(il, p, levels[lvl_file[lvl]].suffix);
                const auto * w = ml.get_weight(name.c_str());
                if (!w) {
                    throw std::runtime_error(format("hobbit: tensor %s is missing", name.c_str()));
                }
                const ggml_tensor * t = w->tensor;
                if (t->ne[2] != cache->n_expert) {
                    throw std::runtime_error(format("hobbit: tensor %s has %lld experts, expected %d",
                            name.c_str(), (long long) t->ne[2], cache->n_expert));
                }
                if (n_moe_layers == 0) {
                    type[lvl][p] = t->type;
                    ne[lvl][p][0] = t->ne[0];
                    ne[lvl][p][1] = t->ne[1];
                    cache->store.expert_bytes[lvl][p] = t->nb[2];
                } else if (t->type != type[lvl][p] || t->ne[0] != ne[lvl][p][0] || t->ne[1] != ne[lvl][p][1]) {
                    throw std::runtime_error(format("hobbit: tensor %s differs in type or shape from the first "
                            "MoE layer; per-layer expert shapes are not supported", name.c_str()));
                }
                cache->store.range(il, lvl, p) = { (int) w->idx, w->offs, t->nb[2] };
            }
        }
        cache->serves[il]     = true;
        cache->gate_inp[il]   = layer.ffn_gate_inp;
        cache->gate_inp_b[il] = layer.ffn_gate_inp_b;
        cache->probs_bias[il] = layer.ffn_exp_probs_b;
        n_moe_layers++;
    }
    if (n_moe_layers == 0) {
        throw std::runtime_error("hobbit: the model has no routed experts");
    }

    // pool tensors; init_pools sets their expert dimension and places them
    ggml_init_params params = {
        /*.mem_size   =*/ ggml_tensor_overhead()*LLAMA_HOBBIT_N_LVL*LLAMA_HOBBIT_N_PROJ,
        /*.mem_buffer =*/ nullptr,
        /*.no_alloc   =*/ true,
    };
    cache->ctx = ggml_init(params);
    if (!cache->ctx) {
        throw std::runtime_error("hobbit: cannot allocate the expert cache's tensor metadata");
    }
    for (int lvl = 0; lvl < n_lvl; ++lvl) {
        for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
            cache->pool[lvl][p] = ggml_new_tensor_3d(cache->ctx, type[lvl][p], ne[lvl][p][0], ne[lvl][p][1], 1);
            ggml_format_name(cache->pool[lvl][p], "hobbit_pool_%s_%s", lvl == 0 ? "hi" : "lo", PROJ_NAME[p]);
        }
    }

    auto * cpu_dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu_dev) {
        throw std::runtime_error("hobbit: no CPU backend");
    }
    ggml_backend_dev_t gpu_dev = gpu_device(model, ml);
    ggml_backend_buffer_type_t pool_buft = ggml_backend_dev_buffer_type(cpu_dev);
    if (gpu_dev) {
        cache->gpu = true;
        cache->device_buft  = ggml_backend_dev_buffer_type(gpu_dev);
        cache->staging_buft = ggml_backend_dev_host_buffer_type(gpu_dev);
        int64_t unified = -1;
        override_int(ml, KV_UNIFIED, unified);
        cache->unified = unified > 0 || (unified < 0 && ggml_backend_dev_type(gpu_dev) == GGML_BACKEND_DEVICE_TYPE_IGPU);
        if (cache->unified && !cache->staging_buft) {
            throw std::runtime_error(format("hobbit: %s has no pinned host memory for unified-memory slots",
                    ggml_backend_dev_name(gpu_dev)));
        }
        if (!cache->staging_buft) {
            cache->staging_buft = ggml_backend_dev_buffer_type(cpu_dev); // copies from pageable memory
        }
        int64_t host_tier = 1;
        override_int(ml, KV_HOST, host_tier);
        if (cache->unified) {
            pool_buft = cache->staging_buft; // the slots are host memory: nothing to copy from
        } else {
            if (host_tier) {
                cache->host.load(cache->store, cache->serves, cache->n_expert, n_lvl, cache->staging_buft);
            }
            int64_t graph_copies = 1;
            override_int(ml, KV_GRAPH_COPIES, graph_copies);
            if (graph_copies && cache->host.resident() && !cache->copier.init(gpu_dev)) {
                LLAMA_LOG_WARN("%s: hobbit: no copy stream on %s, the I/O threads copy the misses\n", __func__,
                        ggml_backend_dev_name(gpu_dev));
            }
            pool_buft = cache->device_buft;
        }
    }
    cache->init_pools(pool_buft, uint64_t(budget));
    if (cache->host.resident()) {
        cache->host.make_tensors(cache->store, cache->pool, cache->n_expert); // for the CPU path
    }
    int64_t cpu_path = -1;
    override_int(ml, KV_CPU_PATH, cpu_path);
    cache->cpu_path_mode = cpu_path < 0 ? -1 : (cpu_path > 0 ? 1 : 0);
    int64_t split = 0; // off: slower on the benchmark machine (BENCHMARKS.md, ninth session)
    override_int(ml, KV_SPLIT, split);
    cache->split_mode = split != 0 ? 1 : 0;
    int64_t split_cpu_pct = 50;
    if (override_int(ml, KV_SPLIT_CPU, split_cpu_pct) && (split_cpu_pct < 1 || split_cpu_pct > 99)) {
        throw std::runtime_error(format("hobbit: %s must be between 1 and 99, got %lld", KV_SPLIT_CPU,
                (long long) split_cpu_pct));
    }
    cache->split_share = double(split_cpu_pct)/100.0;
    // off: 2.5-7.5% faster in four starts of six on the H100 machines, 7-14% slower in the two
    // with the busiest hosts (BENCHMARKS.md, twelfth session)
    int64_t warm = 0;
    if (override_int(ml, KV_WARM, warm) && (warm < 0 || warm > 2)) {
        throw std::runtime_error(format("hobbit: %s must be 0, 1 or 2, got %lld", KV_WARM, (long long) warm));
    }
    cache->warm     = warm != 0 && cache->host.resident(); // the CPU path's experts are in the host tier
    cache->warm_pin = warm == 2;
    if (cache->warm) {
        cache->load_routers();
    }
    int64_t always_predict = 0;
    override_int(ml, KV_PREDICT, always_predict);
    cache->always_predict = always_predict != 0;
    cache->start_loader((int) io_threads);
    cache->calibrate_copies();
    int64_t resident = 1;
    override_int(ml, KV_RESIDENT, resident);
    cache->resident_mode = resident != 0 ? 1 : 0;
    cache->make_resident();
    initial_policy(*cache, ml);

    const llama_hobbit_stats s = cache->get_stats();
    LLAMA_LOG_INFO("%s: hobbit expert cache in %s%s: %.2f MiB, %d hi slots (%s)%s%s, %d MoE layers x %d experts\n", __func__,
            gpu_dev ? ggml_backend_dev_name(gpu_dev) : "host memory", cache->unified ? " (unified memory: pinned host slots)" : "",
            s.cache_capacity_bytes/1024.0/1024.0, s.n_slots_hi, cache->type_name[0].c_str(),
            cache->has_lo ? format(", %d lo slots (", s.n_slots_lo).c_str() : "",
            cache->has_lo ? (cache->type_name[1] + ")").c_str() : "",
            n_moe_layers, cache->n_expert);
    return cache;
}

} // namespace

bool llama_hobbit_is_routed_expert(const std::string & name) {
    static const std::regex re(R"(^blk\.\d+\.ffn_(gate|up|down)_exps(\.[a-z0-9_]+)?\.weight$)");
    return std::regex_match(name, re);
}

bool llama_hobbit_requested(llama_model_loader & ml) {
    for (const auto & [key, ov] : ml.kv_overrides) {
        if (key.rfind(KV_PREFIX, 0) != 0) {
            continue;
        }
        bool known = false;
        for (const char * k : KNOWN_KEYS) {
            known = known || key == k;
        }
        if (!known) {
            std::string names;
            for (const char * k : KNOWN_KEYS) {
                names += names.empty() ? k : std::string(", ") + k;
            }
            const std::string msg = format("hobbit: unknown setting %s (known: %s)", key.c_str(), names.c_str());
            llama_hobbit_set_last_error(msg);
            throw std::runtime_error(msg);
        }
    }
    // extra expert levels are never created by the model: don't count them, don't prefetch them
    for (const auto & [name, w] : ml.weights_map) {
        if (is_extra_level(name)) {
            ml.n_tensors--;
            ml.lazy.add_range(w.idx, w.offs, w.offs + ggml_nbytes(w.tensor));
        }
    }
    return ml.kv_overrides.count(KV_BUDGET) > 0;
}

std::shared_ptr<llama_hobbit_cache> llama_hobbit_attach(const llama_model & model, llama_model_loader & ml,
                                                        const std::vector<std::string> & paths) {
    try {
        return attach_impl(model, ml, paths);
    } catch (const std::exception & e) {
        llama_hobbit_set_last_error(e.what());
        throw;
    }
}

std::shared_ptr<llama_hobbit_context> llama_hobbit_context_init(const llama_model & model) {
    if (!model.hobbit) {
        return nullptr;
    }
    return std::make_shared<llama_hobbit_context>(model.hobbit);
}

uint32_t llama_hobbit_graph_key(llama_hobbit_context * hctx) {
    if (!hctx) {
        return 0;
    }
    hctx->graph_depth = hctx->cache->graph_depth();
    return 1 + (uint32_t) hctx->graph_depth;
}

void llama_hobbit_ubatch_begin(llama_hobbit_context * hctx, int64_t n_tokens, int n_threads) {
    if (!hctx) {
        return;
    }
    hctx->cache->count_resident_routes(n_tokens);
    hctx->n_threads = n_threads > 0 ? n_threads : 1;
    llama_hobbit_set_last_error("");
    hctx->failed = false;
    hctx->error.clear();
}

bool llama_hobbit_ubatch_end(llama_hobbit_context * hctx) {
    if (!hctx) {
        return true;
    }
    hctx->cache->release(*hctx);
    if (!hctx->failed) {
        return true;
    }
    LLAMA_LOG_ERROR("%s\n", hctx->error.c_str());
    llama_hobbit_set_last_error(hctx->error);
    hctx->failed = false;
    hctx->error.clear();
    return false;
}
