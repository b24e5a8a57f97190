#include "hobbit-slots.h"

#include <algorithm>
#include <limits>

void llama_hobbit_slots::init(int n_layer_, int n_expert_, bool has_lo_, int n_units_, int hi_span_) {
    n_layer  = n_layer_;
    n_expert = n_expert_;
    has_lo   = has_lo_;
    n_units  = n_units_;
    hi_span  = hi_span_;
    entries.assign(size_t(n_layer)*n_expert*LLAMA_HOBBIT_N_LVL, llama_hobbit_entry{});
    unit_owner.assign(n_units, -1);
}

int llama_hobbit_slots::n_available() const {
    int n = 0;
    for (int u = 0; u < n_units; ++u) {
        n += available(u) ? 1 : 0;
    }
    return n;
}

int llama_hobbit_slots::alloc(int idx, const llama_hobbit_evictor & ev, const llama_hobbit_clock & now,
                              std::vector<int> * evicted, bool pin, int * busy) {
    const int lvl = level_of(idx);
    const int sp  = span(lvl);
    int    best       = -1;
    double best_score = std::numeric_limits<double>::infinity();
    int    best_n     = 0;
    for (int start = 0; start + sp <= n_units; start += sp) {
        double score = -std::numeric_limits<double>::infinity();
        int    n_occ = 0;
        bool   ok    = true;
        for (int u = start; u < start + sp; ++u) {
            const int o = unit_owner[u];
            if (o < 0) {
                continue;
            }
            if (entries[o].pins > 0) {
                ok = false;
                break;
            }
            score = std::max(score, ev.score(entries[o], layer_of(o), now));
            n_occ++;
        }
        if (!ok) {
            continue;
        }
        if (n_occ == 0) {
            best   = start;
            best_n = 0;
            break; // free room: nothing to evict
        }
        if (score < best_score || (score == best_score && n_occ < best_n)) {
            best       = start;
            best_score = score;
            best_n     = n_occ;
        }
    }
    if (best < 0) {
        return -1; // no room (an entry scored +inf is protected: never evicted)
    }
    for (int u = best; u < best + sp; ++u) {
        const int o = unit_owner[u];
        if (o >= 0 && this->busy(o)) {
            if (busy) {
                *busy = o;
            }
            return BUSY; // its read still writes into these units
        }
    }
    for (int u = best; u < best + sp; ++u) {
        const int o = unit_owner[u];
        if (o >= 0) {
            if (evicted) {
                evicted->push_back(o);
            }
            release(o);
        }
    }
    for (int u = best; u < best + sp; ++u) {
        unit_owner[u] = idx;
    }
    llama_hobbit_entry & e = entries[idx];
    e.slot  = best/sp;
    e.state = LLAMA_HOBBIT_LOADING;
    e.pins += pin ? 1 : 0; // stale pins of contexts that saw an earlier copy fail stay counted
    return e.slot;
}

bool llama_hobbit_slots::could_alloc(int lvl, const std::vector<int> & mine) const {
    const int sp = span(lvl);
    for (int start = 0; start + sp <= n_units; start += sp) {
        bool ok = true;
        for (int u = start; u < start + sp && ok; ++u) {
            const int o = unit_owner[u];
            ok = o < 0 || !std::binary_search(mine.begin(), mine.end(), o);
        }
        if (ok) {
            return true;
        }
    }
    return false;
}

void llama_hobbit_slots::release(int idx) {
    llama_hobbit_entry & e = entries[idx];
    const int sp = span(level_of(idx));
    for (int u = e.slot*sp; u < (e.slot + 1)*sp; ++u) {
        unit_owner[u] = -1;
    }
    e.slot  = -1;
    e.state = LLAMA_HOBBIT_EMPTY;
}

bool llama_hobbit_slots::place(int idx, int slot) {
    llama_hobbit_entry & e = entries[idx];
    const int sp = span(level_of(idx));
    if (e.state != LLAMA_HOBBIT_EMPTY || slot < 0 || (slot + 1)*sp > n_units) {
        return false;
    }
    for (int u = slot*sp; u < (slot + 1)*sp; ++u) {
        if (unit_owner[u] >= 0) {
            return false;
        }
    }
    for (int u = slot*sp; u < (slot + 1)*sp; ++u) {
        unit_owner[u] = idx;
    }
    e.slot  = slot;
    e.state = LLAMA_HOBBIT_READY;
    e.pins++;
    return true;
}

bool llama_hobbit_slots::consistent() const {
    std::vector<int> seen(n_units, -1);
    for (int idx = 0; idx < (int) entries.size(); ++idx) {
        const llama_hobbit_entry & e = entries[idx];
        if (e.pins < 0) {
            return false;
        }
        if ((e.state == LLAMA_HOBBIT_EMPTY) != (e.slot < 0)) {
            return false;
        }
        if (e.slot < 0) {
            continue;
        }
        const int sp = span(level_of(idx));
        if (e.slot >= n_units/sp) {
            return false;
        }
        for (int u = e.slot*sp; u < (e.slot + 1)*sp; ++u) {
            if (unit_owner[u] != idx || seen[u] >= 0) {
                return false;
            }
            seen[u] = idx;
        }
    }
    for (int u = 0; u < n_units; ++u) {
        if (unit_owner[u] >= 0 && seen[u] != unit_owner[u]) {
            return false;
        }
    }
    return true;
}
