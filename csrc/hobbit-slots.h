// HOBBIT slot allocator: which cached copy of which expert occupies which part of the slot pools.
//
// The pools are cut into `n_units` units of one lo expert (one hi expert when the cache is hi
// only, or when the budget holds every hi expert in units of its size). A lo copy takes one
// unit; a hi copy takes `hi_span` consecutive units starting at a multiple of `hi_span`, so hi
// slot i is units [i*hi_span, (i+1)*hi_span) and lo slot j is unit j: both precisions share
// one byte budget.
//
// Every (layer, expert, level) has an entry with a state (empty, loading, ready) and a pin
// count: a pinned entry is being read by a running graph (or written by a load a graph waits
// for) and is never evicted. A prefetch holds no pin: its copy may be chosen for eviction like
// any unused one, which then waits for its read to end. This class only keeps the books;
// memory and locking belong to the cache.
#pragma once

#include "hobbit-store.h"

#include <cstdint>
#include <vector>

enum llama_hobbit_state : uint8_t {
    LLAMA_HOBBIT_EMPTY   = 0, // not cached
    LLAMA_HOBBIT_LOADING = 1, // a slot is assigned and a read into it is in flight
    LLAMA_HOBBIT_READY   = 2, // cached and valid
};

// where the cache is in time and in the model when an eviction is decided. Time is counted in
// ticks (one per MoE layer evaluation) and passes (one per walk through the layers: a pass
// starts when a layer is served that is not after the one served before).
struct llama_hobbit_clock {
    uint64_t tick    = 0;
    uint64_t pass    = 0;
    int      il_now  = 0; // the layer being served
    int      n_layer = 1;
};

// one cached copy of one expert (all projections) at one level, and what eviction looks at
struct llama_hobbit_entry {
    int32_t  slot  = -1; // slot in the pool of its level, -1 when not cached
    uint8_t  state = LLAMA_HOBBIT_EMPTY;
    int32_t  pins  = 0;  // graphs (and loads) using it now
    uint64_t last_use  = 0; // tick of the last use
    uint64_t last_pass = 0; // pass of the last use
    float    uses      = 0.0f; // uses, decayed per pass, as of pass decay_pass
    float    hi_needs  = 0.0f; // uses where the policy wanted hi precision, decayed likewise
    uint64_t decay_pass = 0;
    uint8_t  prefetched = 0; // > 0: loaded by a prefetch this many layers ahead, not used yet
};

// eviction priority: among evictable entries, the one with the lowest score goes first
struct llama_hobbit_evictor {
    virtual ~llama_hobbit_evictor() = default;
    // e: the entry, il: its layer
    virtual double score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const = 0;
};

class llama_hobbit_slots {
public:
    void init(int n_layer, int n_expert, bool has_lo, int n_units, int hi_span);

    int n_layer  = 0;
    int n_expert = 0;
    bool has_lo  = false;
    int n_units  = 0;
    int hi_span  = 1;

    int span(int lvl) const { return lvl == LLAMA_HOBBIT_HI ? hi_span : 1; }
    int n_slots(int lvl) const { return n_units/span(lvl); }

    int index(int il, int e, int lvl) const { return (il*n_expert + e)*LLAMA_HOBBIT_N_LVL + lvl; }
    int layer_of(int idx) const { return idx/(n_expert*LLAMA_HOBBIT_N_LVL); }
    int expert_of(int idx) const { return (idx/LLAMA_HOBBIT_N_LVL) % n_expert; }
    int level_of(int idx) const { return idx % LLAMA_HOBBIT_N_LVL; }

    llama_hobbit_entry       & entry(int idx)       { return entries[idx]; }
    const llama_hobbit_entry & entry(int idx) const { return entries[idx]; }

    bool cached(int idx) const { return entries[idx].state != LLAMA_HOBBIT_EMPTY; }

    // expert e of layer il is cached (or on its way) at some level: a route of it is no miss
    bool cached_any(int il, int e) const {
        return cached(index(il, e, LLAMA_HOBBIT_HI)) || (has_lo && cached(index(il, e, LLAMA_HOBBIT_LO)));
    }

    // an unpinned copy still being read: a prefetch in flight, evictable once its read is over
    bool busy(int idx) const { return entries[idx].state == LLAMA_HOBBIT_LOADING && entries[idx].pins == 0; }

    // a unit is available when it is free or held by an entry nobody pins
    bool available(int unit) const {
        const int owner = unit_owner[unit];
        return owner < 0 || entries[owner].pins == 0;
    }
    int n_available() const;

    // Find room for entry idx (which must be empty), evicting the lowest-scored unpinned
    // entries, and mark it loading (with one pin if `pin`: a graph waits for it; a prefetch
    // holds none). Returns its slot; -1 if no room is available (nothing changed); or
    // LLAMA_HOBBIT_BUSY if the room chosen holds an unpinned copy still being read (a
    // prefetch): nothing changed, *busy names it, and the choice stands once it is read or
    // taken back. `evicted` (optional) receives the entries evicted.
    static constexpr int BUSY = -2;
    int alloc(int idx, const llama_hobbit_evictor & ev, const llama_hobbit_clock & now, std::vector<int> * evicted = nullptr,
              bool pin = true, int * busy = nullptr);

    // could a copy at level lvl get room if no entry but those in `mine` (sorted) were pinned?
    bool could_alloc(int lvl, const std::vector<int> & mine) const;

    // drop the copy of entry idx (must be cached); its units become free, its pins stay counted
    void release(int idx);

    // put entry idx (empty) in slot `slot` of its level, whose units must be free, as ready and
    // pinned for good: false (nothing changed) if they are not
    bool place(int idx, int slot);

    void pin(int idx)   { entries[idx].pins++; }
    void unpin(int idx) { entries[idx].pins--; }

    // the entry owning a unit, -1 if free
    int owner(int unit) const { return unit_owner[unit]; }

    // bookkeeping invariants hold (for tests): units and slots agree, pins >= 0
    bool consistent() const;

private:
    std::vector<llama_hobbit_entry> entries;    // [il][expert][lvl]
    std::vector<int32_t>            unit_owner; // entry owning each unit, -1 free
};
