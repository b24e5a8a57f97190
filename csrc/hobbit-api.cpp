// The llama_hobbit_* C API (include/llama-hobbit.h). No exception crosses it.

#include "llama-hobbit.h"
#include "hobbit-cache.h"
#include "hobbit-hooks.h"

#include "llama-model.h"

#include <string>

#ifndef LLAMA_HOBBIT_SOURCE_ID
#define LLAMA_HOBBIT_SOURCE_ID "unknown"
#endif

namespace {

thread_local std::string g_last_error;

llama_hobbit_cache * cache_of(const llama_model * model) {
    return model ? model->hobbit.get() : nullptr;
}

} // namespace

void llama_hobbit_set_last_error(const std::string & msg) {
    g_last_error = msg;
}

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
    p.eviction          = LLAMA_HOBBIT_EVICT_BLEND;
    // measured on the trained model at 25% (600 tokens, decode): these weights hit 0.325 of
    // routes against 0.303 with equal weights and 0.286 for plain LRU (BENCHMARKS.md)
    p.w_recency         = 1.0f;
    p.w_frequency       = 0.5f;
    p.w_hi_need         = 0.5f;
    p.w_distance        = 2.0f;
    p.prefetch_depth    = LLAMA_HOBBIT_PREFETCH_AUTO;
    p.prefetch_width    = 0;
    p.cpu_compute       = 1;
    return p;
}

int32_t llama_hobbit_set_policy(struct llama_model * model, struct llama_hobbit_policy policy) {
    llama_hobbit_cache * cache = cache_of(model);
    if (!cache) {
        g_last_error = "hobbit: the model is not in HOBBIT mode";
        return -1;
    }
    std::string err;
    try {
        if (!cache->set_policy(policy, err)) {
            g_last_error = err;
            return -1;
        }
    } catch (const std::exception & e) {
        g_last_error = e.what();
        return -1;
    }
    return 0;
}

struct llama_hobbit_policy llama_hobbit_get_policy(const struct llama_model * model) {
    llama_hobbit_cache * cache = cache_of(model);
    return cache ? cache->get_policy() : llama_hobbit_policy_default();
}

struct llama_hobbit_stats llama_hobbit_get_stats(const struct llama_model * model) {
    llama_hobbit_cache * cache = cache_of(model);
    return cache ? cache->get_stats() : llama_hobbit_stats {};
}

void llama_hobbit_reset_stats(struct llama_model * model) {
    if (llama_hobbit_cache * cache = cache_of(model)) {
        cache->reset_stats();
    }
}

uint64_t llama_hobbit_min_budget(const struct llama_model * model) {
    llama_hobbit_cache * cache = cache_of(model);
    return cache ? cache->min_budget() : 0;
}

bool llama_hobbit_gpu_memory(size_t * free, size_t * total, bool * integrated) {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto type = ggml_backend_dev_type(dev);
        if (type != GGML_BACKEND_DEVICE_TYPE_GPU && type != GGML_BACKEND_DEVICE_TYPE_IGPU) {
            continue;
        }
        size_t f = 0, t = 0;
        ggml_backend_dev_memory(dev, &f, &t);
        if (free) {
            *free = f;
        }
        if (total) {
            *total = t;
        }
        if (integrated) {
            *integrated = type == GGML_BACKEND_DEVICE_TYPE_IGPU;
        }
        return true;
    }
    return false;
}

int32_t llama_hobbit_trace_enable(struct llama_model * model, bool enable, uint64_t capacity) {
    llama_hobbit_cache * cache = cache_of(model);
    if (!cache) {
        g_last_error = "hobbit: the model is not in HOBBIT mode";
        return -1;
    }
    try {
        cache->trace_enable(enable, capacity);
    } catch (const std::exception & e) {
        g_last_error = e.what();
        return -1;
    }
    return 0;
}

size_t llama_hobbit_trace_read(struct llama_model * model, struct llama_hobbit_route_event * out, size_t max,
                               uint64_t * dropped) {
    llama_hobbit_cache * cache = cache_of(model);
    if (!cache || !out) {
        return 0;
    }
    try {
        return cache->trace_read(out, max, dropped);
    } catch (const std::exception & e) {
        g_last_error = e.what();
        return 0;
    }
}

const char * llama_hobbit_last_error(void) {
    return g_last_error.c_str();
}
