// HOBBIT eviction policies: which cached expert makes room for a new one.
#pragma once

#include "hobbit-slots.h"

#include <cstdint>
#include <memory>

// the evictor for an enum llama_hobbit_eviction value, or nullptr if there is none such
std::unique_ptr<llama_hobbit_evictor> llama_hobbit_make_evictor(int32_t eviction);

// least recently used: the entry used longest ago goes first
struct llama_hobbit_evict_lru : llama_hobbit_evictor {
    double score(const llama_hobbit_entry & e, int il, int il_now, uint64_t tick) const override;
};
