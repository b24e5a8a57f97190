#include "hobbit-evict.h"

#include "llama-hobbit.h"

double llama_hobbit_evict_lru::score(const llama_hobbit_entry & e, int il, int il_now, uint64_t tick) const {
    (void) il;
    (void) il_now;
    (void) tick;
    return double(e.last_use);
}

std::unique_ptr<llama_hobbit_evictor> llama_hobbit_make_evictor(int32_t eviction) {
    switch (eviction) {
        case LLAMA_HOBBIT_EVICT_LRU: return std::make_unique<llama_hobbit_evict_lru>();
        default:                     return nullptr;
    }
}
