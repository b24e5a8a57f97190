#include "llama-hobbit.h"
#include "llama-hobbit-impl.h"
#include "llama-hobbit-cache.h"

#include "llama-impl.h"
#include "llama-model.h"
#include "llama-model-loader.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <regex>
#include <stdexcept>
#include <unordered_map>

#ifndef LLAMA_HOBBIT_SOURCE_ID
#define LLAMA_HOBBIT_SOURCE_ID "unknown"
#endif

namespace {

const char * const PROJ_NAME[LLAMA_HOBBIT_N_PROJ] = { "gate", "up", "down" };

// every HOBBIT model and layer, found by model and by the layer's routed up-projection tensor
struct registry {
    std::mutex mtx;
    std::unordered_map<const llama_model *, std::unique_ptr<llama_hobbit_cache>> caches;
    std::unordered_map<const ggml_tensor *, llama_hobbit_layer *> layers;
};

registry & reg() {
    static registry r;
    return r;
}

thread_local std::string g_last_error;

// HOBBIT's load-time settings come as kv overrides only (they are not file keys)
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

llama_hobbit_cache * cache_of(const llama_model * model) {
    auto & r = reg();
    std::lock_guard<std::mutex> lock(r.mtx);
    auto it = r.caches.find(model);
    return it == r.caches.end() ? nullptr : it->second.get();
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
    const int64_t kid = gguf_find_key(ml.metadata, LLAMA_HOBBIT_KV_TYPES);
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

void attach_impl(llama_model & model, llama_model_loader & ml, const std::vector<std::string> & paths) {
    int64_t budget = -1;
    if (!override_int(ml, LLAMA_HOBBIT_KV_BUDGET, budget)) {
        return;
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
    const int lvl_hi = find_level(LLAMA_HOBBIT_KV_HI_TYPE, 0);
    const int lvl_lo = find_level(LLAMA_HOBBIT_KV_LO_TYPE, levels.size() > 1 ? (int) levels.size() - 1 : -1);
    if (lvl_hi < 0) {
        throw std::runtime_error("hobbit: the hi level cannot be none");
    }

    auto cache = std::make_unique<llama_hobbit_cache>();
    cache->n_layer       = (int) model.hparams.n_layer();
    cache->n_expert      = (int) model.hparams.n_expert;
    cache->n_expert_used = (int) model.hparams.n_expert_used();
    cache->has_lo        = lvl_lo >= 0 && lvl_lo != lvl_hi;
    cache->type_name[LLAMA_HOBBIT_HI] = levels[lvl_hi].label;
    cache->type_name[LLAMA_HOBBIT_LO] = cache->has_lo ? levels[lvl_lo].label : "";
    cache->policy = llama_hobbit_policy_default();
    llama_hobbit_set_evictor(*cache, cache->policy.eviction);

    int64_t direct_io = 0;
    override_int(ml, LLAMA_HOBBIT_KV_DIRECT, direct_io);
    for (const auto & path : paths) {
        const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            throw std::runtime_error(format("hobbit: cannot open %s: %s", path.c_str(), strerror(errno)));
        }
        cache->fds.push_back(fd);
        int fd_direct = -1;
#ifdef O_DIRECT
        if (direct_io) {
            fd_direct = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
            if (fd_direct < 0) {
                LLAMA_LOG_WARN("%s: hobbit: O_DIRECT not available for %s (%s), using buffered reads\n",
                        __func__, path.c_str(), strerror(errno));
            }
        }
#endif
        cache->fds_direct.push_back(fd_direct);
    }

    const int n_lvl = cache->has_lo ? 2 : 1;
    const int lvl_file[2] = { lvl_hi, lvl_lo };
    ggml_type type[2][LLAMA_HOBBIT_N_PROJ] = {};
    int64_t   ne[2][LLAMA_HOBBIT_N_PROJ][2] = {};
    cache->src.resize(size_t(cache->n_layer)*LLAMA_HOBBIT_N_LVL*LLAMA_HOBBIT_N_PROJ);
    int n_moe_layers = 0;
    for (int il = 0; il < cache->n_layer; ++il) {
        const llama_layer & layer = model.layers[il];
        if (!layer.ffn_up_exps) {
            continue; // a dense layer
        }
        if (!layer.ffn_gate_exps || !layer.ffn_down_exps || layer.ffn_gate_up_exps ||
                layer.ffn_up_exps_b || layer.ffn_gate_exps_b || layer.ffn_down_exps_b || layer.ffn_up_exps_s) {
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
                    cache->expert_bytes[lvl][p] = t->nb[2];
                } else if (t->type != type[lvl][p] || t->ne[0] != ne[lvl][p][0] || t->ne[1] != ne[lvl][p][1]) {
                    throw std::runtime_error(format("hobbit: tensor %s differs in type or shape from layer 0; "
                            "per-layer expert shapes are not supported", name.c_str()));
                }
                cache->src_at(il, lvl, p) = { cache->fds.at(w->idx), cache->fds_direct.at(w->idx), w->offs, t->nb[2] };
            }
        }
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
    cache->init_pools(ggml_backend_dev_buffer_type(cpu_dev), size_t(budget));

    cache->layers.resize(cache->n_layer);
    LLAMA_LOG_INFO("%s: hobbit expert cache: %.2f MiB, %d hi slots (%s)%s%s, %d MoE layers x %d experts\n", __func__,
            cache->stats.cache_capacity_bytes/1024.0/1024.0, cache->stats.n_slots_hi, cache->type_name[0].c_str(),
            cache->has_lo ? format(", %d lo slots (", cache->stats.n_slots_lo).c_str() : "",
            cache->has_lo ? (cache->type_name[1] + ")").c_str() : "",
            n_moe_layers, cache->n_expert);

    auto & r = reg();
    std::lock_guard<std::mutex> lock(r.mtx);
    for (int il = 0; il < cache->n_layer; ++il) {
        cache->layers[il] = { cache.get(), il };
        if (model.layers[il].ffn_up_exps) {
            r.layers[model.layers[il].ffn_up_exps] = &cache->layers[il];
        }
    }
    r.caches[&model] = std::move(cache);
}

} // namespace

//
// hooks
//

bool llama_hobbit_is_routed_expert(const std::string & name) {
    static const std::regex re(R"(^blk\.\d+\.ffn_(gate|up|down)_exps(\.[a-z0-9_]+)?\.weight$)");
    return std::regex_match(name, re);
}

bool llama_hobbit_is_extra_level(const std::string & name) {
    static const std::regex re(R"(^blk\.\d+\.ffn_(gate|up|down)_exps\.[a-z0-9_]+\.weight$)");
    return std::regex_match(name, re);
}

bool llama_hobbit_requested(llama_model_loader & ml) {
    // extra expert levels are never created by the model: don't count them, don't prefetch them
    for (const auto & [name, w] : ml.weights_map) {
        if (llama_hobbit_is_extra_level(name)) {
            ml.n_tensors--;
            ml.lazy.add_range(w.idx, w.offs, w.offs + ggml_nbytes(w.tensor));
        }
    }
    return ml.kv_overrides.count(LLAMA_HOBBIT_KV_BUDGET) > 0;
}

void llama_hobbit_attach(llama_model & model, llama_model_loader & ml, const std::vector<std::string> & paths) {
    g_last_error.clear();
    try {
        attach_impl(model, ml, paths);
    } catch (const std::exception & e) {
        g_last_error = e.what();
        throw;
    }
}

void llama_hobbit_detach(const llama_model * model) {
    auto & r = reg();
    std::lock_guard<std::mutex> lock(r.mtx);
    auto it = r.caches.find(model);
    if (it == r.caches.end()) {
        return;
    }
    for (auto lit = r.layers.begin(); lit != r.layers.end();) {
        lit = lit->second->cache == it->second.get() ? r.layers.erase(lit) : std::next(lit);
    }
    r.caches.erase(it);
}

llama_hobbit_layer * llama_hobbit_layer_for(const ggml_tensor * up_exps) {
    if (!up_exps) {
        return nullptr;
    }
    auto & r = reg();
    std::lock_guard<std::mutex> lock(r.mtx);
    auto it = r.layers.find(up_exps);
    return it == r.layers.end() ? nullptr : it->second;
}

//
// C API
//

int32_t llama_hobbit_api_version(void) {
    return LLAMA_HOBBIT_API_VERSION;
}

const char * llama_hobbit_source_id(void) {
    return LLAMA_HOBBIT_SOURCE_ID;
}

bool llama_hobbit_active(const struct llama_model * model) {
    return cache_of(model) != nullptr;
}

struct llama_hobbit_policy llama_hobbit_policy_default(void) {
    llama_hobbit_policy p;
    p.hi_threshold      = 0.5f;
    p.skip_threshold    = 0.0f;
    p.upgrade_threshold = 0.9f;
    p.eviction          = LLAMA_HOBBIT_EVICT_LRU;
    return p;
}

int32_t llama_hobbit_set_policy(struct llama_model * model, struct llama_hobbit_policy policy) {
    llama_hobbit_cache * cache = cache_of(model);
    if (!cache) {
        g_last_error = "hobbit: the model is not in HOBBIT mode";
        return -1;
    }
    if (!(policy.skip_threshold >= 0.0f) || !(policy.hi_threshold >= policy.skip_threshold) ||
            !(policy.upgrade_threshold >= 0.0f) || policy.eviction != LLAMA_HOBBIT_EVICT_LRU) {
        g_last_error = "hobbit: invalid policy (need 0 <= skip_threshold <= hi_threshold, upgrade_threshold >= 0, eviction lru)";
        return -1;
    }
    std::lock_guard<std::mutex> lock(cache->mtx);
    cache->policy = policy;
    llama_hobbit_set_evictor(*cache, policy.eviction);
    return 0;
}

struct llama_hobbit_policy llama_hobbit_get_policy(const struct llama_model * model) {
    llama_hobbit_cache * cache = cache_of(model);
    if (!cache) {
        return llama_hobbit_policy_default();
    }
    std::lock_guard<std::mutex> lock(cache->mtx);
    return cache->policy;
}

struct llama_hobbit_stats llama_hobbit_get_stats(const struct llama_model * model) {
    llama_hobbit_cache * cache = cache_of(model);
    if (!cache) {
        return llama_hobbit_stats {};
    }
    std::lock_guard<std::mutex> lock(cache->mtx);
    return cache->stats;
}

void llama_hobbit_reset_stats(struct llama_model * model) {
    llama_hobbit_cache * cache = cache_of(model);
    if (!cache) {
        return;
    }
    std::lock_guard<std::mutex> lock(cache->mtx);
    llama_hobbit_stats & s = cache->stats;
    const llama_hobbit_stats keep = s;
    s = {};
    s.budget_bytes         = keep.budget_bytes;
    s.cache_capacity_bytes = keep.cache_capacity_bytes;
    s.cache_bytes          = keep.cache_bytes;
    s.cache_peak_bytes     = keep.cache_bytes;
    s.n_slots_hi           = keep.n_slots_hi;
    s.n_slots_lo           = keep.n_slots_lo;
}

const char * llama_hobbit_last_error(void) {
    return g_last_error.c_str();
}
