#include "hobbit-host.h"

#include "llama-impl.h"

#include "ggml-backend-impl.h" // a buffer of our own over pinned memory (unified memory)

#include <cstdint>
#include <cstring>
#include <stdexcept>

llama_hobbit_staging::~llama_hobbit_staging() {
    if (buf) {
        ggml_backend_buffer_free(buf);
    }
}

bool llama_hobbit_staging::reserve(ggml_backend_buffer_type_t buft, size_t n) {
    if (n <= size) {
        return true;
    }
    if (buf) {
        ggml_backend_buffer_free(buf);
    }
    buf  = ggml_backend_buft_alloc_buffer(buft, n);
    data = buf ? (char *) ggml_backend_buffer_get_base(buf) : nullptr;
    size = buf ? n : 0;
    return buf != nullptr;
}

namespace {

// the wrapped buffer's context is the pinned host buffer it presents to the device
ggml_backend_buffer_t inner(ggml_backend_buffer_t buffer) {
    return (ggml_backend_buffer_t) buffer->context;
}

void wrap_free(ggml_backend_buffer_t buffer) {
    ggml_backend_buffer_free(inner(buffer));
}

void * wrap_base(ggml_backend_buffer_t buffer) {
    return ggml_backend_buffer_get_base(inner(buffer));
}

// the memory is host memory: plain memory operations do for the rest
void wrap_memset(ggml_backend_buffer_t, ggml_tensor * t, uint8_t value, size_t offset, size_t size) {
    memset((char *) t->data + offset, value, size);
}

void wrap_set(ggml_backend_buffer_t, ggml_tensor * t, const void * data, size_t offset, size_t size) {
    memcpy((char *) t->data + offset, data, size);
}

void wrap_get(ggml_backend_buffer_t, const ggml_tensor * t, void * data, size_t offset, size_t size) {
    memcpy(data, (const char *) t->data + offset, size);
}

void wrap_clear(ggml_backend_buffer_t buffer, uint8_t value) {
    memset(wrap_base(buffer), value, ggml_backend_buffer_get_size(buffer));
}

const ggml_backend_buffer_i WRAP_IFACE = {
    /* .free_buffer   = */ wrap_free,
    /* .get_base      = */ wrap_base,
    /* .init_tensor   = */ nullptr,
    /* .memset_tensor = */ wrap_memset,
    /* .set_tensor    = */ wrap_set,
    /* .get_tensor    = */ wrap_get,
    /* .set_tensor_2d = */ nullptr,
    /* .get_tensor_2d = */ nullptr,
    /* .cpy_tensor    = */ nullptr,
    /* .clear         = */ wrap_clear,
    /* .reset         = */ nullptr,
};

} // namespace

ggml_backend_buffer_t llama_hobbit_wrap_for_device(ggml_backend_buffer_t host, ggml_backend_buffer_type_t dev_buft) {
    if (!host || !ggml_backend_buffer_is_host(host)) {
        return nullptr;
    }
    ggml_backend_buffer_t b = ggml_backend_buffer_init(dev_buft, WRAP_IFACE, host, ggml_backend_buffer_get_size(host));
    if (!b) {
        ggml_backend_buffer_free(host);
    }
    return b;
}

llama_hobbit_host::~llama_hobbit_host() {
    if (tctx) {
        ggml_free(tctx);
    }
    if (buf) {
        ggml_backend_buffer_free(buf);
    }
}

void llama_hobbit_host::load(const llama_hobbit_store & store, const std::vector<bool> & serves, int n_expert,
                             int n_lvl, ggml_backend_buffer_type_t buft) {
    const int n_layer = (int) serves.size();
    offs.assign(size_t(n_layer)*LLAMA_HOBBIT_N_LVL*LLAMA_HOBBIT_N_PROJ, SIZE_MAX);
    size_t need = 0;
    for (int il = 0; il < n_layer; ++il) {
        for (int lvl = 0; lvl < n_lvl && serves[il]; ++lvl) {
            for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
                offs[key(il, lvl, p)] = need;
                need += GGML_PAD(store.expert_bytes[lvl][p]*n_expert, 64);
            }
        }
    }
    buf = ggml_backend_buft_alloc_buffer(buft, need);
    if (!buf) {
        throw std::runtime_error(format("hobbit: cannot allocate %.2f MiB of pinned host memory for the experts "
                "(run with the host tier off to read them from the file instead)", need/1024.0/1024.0));
    }
    // weights: the scheduler then runs the CPU path's matmuls where these tensors are (the
    // CPU), instead of copying them to the GPU as inputs of its split
    ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    base  = (char *) ggml_backend_buffer_get_base(buf);
    total = need;

    llama_hobbit_bounce bounce;
    if (store.bounce_bytes() > 0 && !bounce.reserve(store.bounce_bytes())) {
        throw std::runtime_error("hobbit: cannot allocate a staging buffer to read the experts");
    }
    const int64_t t0 = ggml_time_us();
    std::string err;
    for (int il = 0; il < n_layer; ++il) {
        for (int lvl = 0; lvl < n_lvl && serves[il]; ++lvl) {
            for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
                for (int e = 0; e < n_expert; ++e) {
                    if (!store.read_part(il, e, lvl, p, const_cast<char *>(part(store, il, e, lvl, p)), bounce, err)) {
                        throw std::runtime_error(err);
                    }
                }
            }
        }
    }
    LLAMA_LOG_INFO("%s: hobbit host tier: %.2f MiB of experts in pinned memory, read in %.2f s\n", __func__,
            total/1024.0/1024.0, (ggml_time_us() - t0)/1e6);
}

void llama_hobbit_host::make_tensors(const llama_hobbit_store & store, ggml_tensor * const proto[][LLAMA_HOBBIT_N_PROJ],
                                     int n_expert) {
    const size_t n = offs.size();
    ggml_init_params params = { ggml_tensor_overhead()*n, nullptr, /*.no_alloc =*/ true };
    tctx = ggml_init(params);
    if (!tctx) {
        throw std::runtime_error("hobbit: cannot allocate the host tier's tensor metadata");
    }
    tensors.assign(n, nullptr);
    const int n_layer = int(n/(LLAMA_HOBBIT_N_LVL*LLAMA_HOBBIT_N_PROJ));
    for (int il = 0; il < n_layer; ++il) {
        for (int lvl = 0; lvl < LLAMA_HOBBIT_N_LVL; ++lvl) {
            for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
                const size_t k = key(il, lvl, p);
                if (offs[k] == SIZE_MAX) {
                    continue;
                }
                const ggml_tensor * pt = proto[lvl][p];
                ggml_tensor * t = ggml_new_tensor_3d(tctx, pt->type, pt->ne[0], pt->ne[1], n_expert);
                if (t->nb[2] != store.expert_bytes[lvl][p] ||
                        ggml_backend_tensor_alloc(buf, t, base + offs[k]) != GGML_STATUS_SUCCESS) {
                    throw std::runtime_error("hobbit: cannot place the host tier's expert tensors");
                }
                ggml_format_name(t, "hobbit_host_%d_%s_%d", il, lvl == 0 ? "hi" : "lo", p);
                tensors[k] = t;
            }
        }
    }
}

ggml_tensor * llama_hobbit_host::tensor(int il, int lvl, int p) const {
    const size_t k = key(il, lvl, p);
    return k < tensors.size() ? tensors[k] : nullptr;
}

const char * llama_hobbit_host::part(const llama_hobbit_store & store, int il, int e, int lvl, int p) const {
    if (!buf) {
        return nullptr;
    }
    const size_t o = offs[key(il, lvl, p)];
    return o == SIZE_MAX ? nullptr : base + o + size_t(e)*store.expert_bytes[lvl][p];
}
