#include "hobbit-host.h"

#include "llama-impl.h"

#include <cstdint>
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

llama_hobbit_host::~llama_hobbit_host() {
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
                offs[(size_t(il)*LLAMA_HOBBIT_N_LVL + lvl)*LLAMA_HOBBIT_N_PROJ + p] = need;
                need += GGML_PAD(store.expert_bytes[lvl][p]*n_expert, 64);
            }
        }
    }
    buf = ggml_backend_buft_alloc_buffer(buft, need);
    if (!buf) {
        throw std::runtime_error(format("hobbit: cannot allocate %.2f MiB of pinned host memory for the experts "
                "(run with the host tier off to read them from the file instead)", need/1024.0/1024.0));
    }
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
                    if (!store.read_part(il, e, lvl, p, (char *) part(store, il, e, lvl, p), bounce, err)) {
                        throw std::runtime_error(err);
                    }
                }
            }
        }
    }
    LLAMA_LOG_INFO("%s: hobbit host tier: %.2f MiB of experts in pinned memory, read in %.2f s\n", __func__,
            total/1024.0/1024.0, (ggml_time_us() - t0)/1e6);
}

const char * llama_hobbit_host::part(const llama_hobbit_store & store, int il, int e, int lvl, int p) const {
    if (!buf) {
        return nullptr;
    }
    const size_t o = offs[(size_t(il)*LLAMA_HOBBIT_N_LVL + lvl)*LLAMA_HOBBIT_N_PROJ + p];
    return o == SIZE_MAX ? nullptr : base + o + size_t(e)*store.expert_bytes[lvl][p];
}
