// HOBBIT expert store and cache.
//
// Store: for every (layer, expert, level, projection) the file and byte range of its data;
// one expert of one projection is one contiguous range, so a load is one read.
//
// Cache: one arena per projection in backend memory, cut into units of one lo expert
// (or one hi expert when the cache is hi only). A hi copy spans `hi_span` units at an aligned
// start; the hi and lo pool tensors are two views of the same arena with different strides,
// so both precisions share one byte budget. Slot i of the hi pool covers units
// [i*hi_span, (i+1)*hi_span); slot j of the lo pool is unit j.
#pragma once

#include "llama-hobbit.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

enum llama_hobbit_proj { LLAMA_HOBBIT_GATE = 0, LLAMA_HOBBIT_UP = 1, LLAMA_HOBBIT_DOWN = 2, LLAMA_HOBBIT_N_PROJ = 3 };
enum llama_hobbit_lvl  { LLAMA_HOBBIT_HI = 0, LLAMA_HOBBIT_LO = 1, LLAMA_HOBBIT_N_LVL = 2 };

// where one (layer, level, projection) tensor's data lives in the model files
struct llama_hobbit_src {
    int    fd     = -1;
    int    fd_direct = -1; // the same file opened with O_DIRECT, -1 when not used
    size_t offs   = 0; // of expert 0
    size_t stride = 0; // bytes between experts (= bytes of one expert)
};

// one cached copy of one expert (all projections) at one level
struct llama_hobbit_entry {
    int32_t  slot     = -1; // slot in the pool of its level, -1 when not cached
    uint64_t last_use = 0;  // tick of the last evaluation that used it
    uint64_t n_use    = 0;  // evaluations that used it
};

// eviction priority: the entry with the lowest score is evicted first
struct llama_hobbit_evictor {
    virtual ~llama_hobbit_evictor() = default;
    virtual double score(const llama_hobbit_entry & e, int il, int il_now) const = 0;
};

struct llama_hobbit_cache;

// per MoE layer handle, given to the graph hook and the policy op
struct llama_hobbit_layer {
    llama_hobbit_cache * cache = nullptr;
    int                  il    = -1;
};

struct llama_hobbit_cache {
    // shape
    int     n_layer  = 0;
    int     n_expert = 0;
    int     n_expert_used = 0;
    bool    has_lo   = false;
    std::string type_name[LLAMA_HOBBIT_N_LVL]; // requested type of each level used

    // store
    std::vector<int> fds;
    std::vector<int> fds_direct;   // O_DIRECT descriptors (hobbit.direct_io), bypassing the page cache
    void *           bounce      = nullptr; // page-aligned staging buffer for O_DIRECT reads
    size_t           bounce_size = 0;
    std::vector<llama_hobbit_src> src; // [il][lvl][proj]
    size_t expert_bytes[LLAMA_HOBBIT_N_LVL][LLAMA_HOBBIT_N_PROJ] = {};

    // slot memory
    int     n_units  = 0;
    int     hi_span  = 1;
    size_t  unit_bytes[LLAMA_HOBBIT_N_PROJ] = {};
    ggml_backend_buffer_t buf[LLAMA_HOBBIT_N_PROJ] = {};
    ggml_context * ctx = nullptr; // holds the pool tensors
    ggml_tensor  * pool[LLAMA_HOBBIT_N_LVL][LLAMA_HOBBIT_N_PROJ] = {};

    // state
    std::vector<llama_hobbit_entry> entries;    // [il][expert][lvl]
    std::vector<int32_t>            unit_owner; // entry index owning each unit, -1 free
    std::vector<llama_hobbit_layer> layers;     // [il], stable addresses for the graph
    std::unique_ptr<llama_hobbit_evictor> evictor;
    uint64_t tick = 0;

    std::mutex          mtx; // guards policy and stats against readers on other threads
    llama_hobbit_policy policy;
    llama_hobbit_stats  stats = {};

    ~llama_hobbit_cache();

    llama_hobbit_src & src_at(int il, int lvl, int proj) {
        return src[(size_t(il)*LLAMA_HOBBIT_N_LVL + lvl)*LLAMA_HOBBIT_N_PROJ + proj];
    }
    int entry_index(int il, int e, int lvl) const { return (il*n_expert + e)*LLAMA_HOBBIT_N_LVL + lvl; }
    size_t entry_bytes(int lvl) const {
        return expert_bytes[lvl][0] + expert_bytes[lvl][1] + expert_bytes[lvl][2];
    }

    // allocate the arenas and pool tensors for `budget` bytes (throws if too small)
    void init_pools(ggml_backend_buffer_type_t buft, size_t budget);

    // the policy: decide hit/load/skip for each route of one layer evaluation, load what is
    // needed and write the slot of each route for the hi path (ids[0]) and lo path (ids[1])
    void route(int il, const ggml_tensor * selected, const ggml_tensor * weights, ggml_tensor * ids);

private:
    bool alloc_slot(int il, int e, int lvl);
    void evict(int entry);
    void load(int il, int e, int lvl);
};

void llama_hobbit_set_evictor(llama_hobbit_cache & cache, int32_t eviction);
