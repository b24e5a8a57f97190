#include "hobbit-cache.h"

#include "hobbit-context.h"
#include "hobbit-evict.h"

#include "llama-impl.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace {

std::string fmt_bytes(uint64_t n) {
    if (n < 1024*1024) {
        return format("%.1f KiB", double(n)/1024.0);
    }
    return format("%.2f MiB", double(n)/(1024.0*1024.0));
}

int32_t & id_at(ggml_tensor * ids, int lvl, int64_t r, int64_t t) {
    return *(int32_t *) ((char *) ids->data + r*ids->nb[0] + t*ids->nb[1] + lvl*ids->nb[2]);
}

void clear_ids(ggml_tensor * ids) {
    for (int64_t lvl = 0; lvl < ids->ne[2]; ++lvl) {
        for (int64_t t = 0; t < ids->ne[1]; ++t) {
            for (int64_t r = 0; r < ids->ne[0]; ++r) {
                id_at(ids, (int) lvl, r, t) = -1;
            }
        }
    }
}

} // namespace

llama_hobbit_cache::~llama_hobbit_cache() {
    for (auto * b : buf) {
        if (b) {
            ggml_backend_buffer_free(b);
        }
    }
    if (ctx) {
        ggml_free(ctx);
    }
}

uint64_t llama_hobbit_cache::min_budget() const {
    uint64_t unit_total = 0;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        unit_total += unit_bytes[p];
    }
    return unit_total*uint64_t(slots.hi_span);
}

void llama_hobbit_cache::init_pools(ggml_backend_buffer_type_t buft, uint64_t budget) {
    const int lo = has_lo ? LLAMA_HOBBIT_LO : LLAMA_HOBBIT_HI;

    uint64_t unit_total = 0;
    int hi_span = 1;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        unit_bytes[p] = GGML_PAD(store.expert_bytes[lo][p], 64);
        unit_total   += unit_bytes[p];
        hi_span = std::max<int>(hi_span, (int) ((store.expert_bytes[LLAMA_HOBBIT_HI][p] + unit_bytes[p] - 1)/unit_bytes[p]));
    }
    // never more units than it takes to hold every expert at both levels
    const uint64_t most = uint64_t(n_layer)*n_expert*(has_lo ? 1 + hi_span : 1);
    uint64_t n_units = std::min<uint64_t>(budget/unit_total, std::min<uint64_t>(most, std::numeric_limits<int32_t>::max()));
    n_units -= n_units % hi_span; // a hi copy starts on a multiple of hi_span

    slots.hi_span = hi_span; // min_budget() reads it
    if (n_units < uint64_t(hi_span)) {
        throw std::runtime_error(format(
            "hobbit: expert budget %s is below the minimum %s (one expert at %s)",
            fmt_bytes(budget).c_str(), fmt_bytes(min_budget()).c_str(), type_name[LLAMA_HOBBIT_HI].c_str()));
    }

    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        const size_t size = size_t(n_units)*unit_bytes[p];
        buf[p] = ggml_backend_buft_alloc_buffer(buft, size);
        if (!buf[p]) {
            throw std::runtime_error(format("hobbit: cannot allocate %s of expert cache", fmt_bytes(size).c_str()));
        }
        ggml_backend_buffer_set_usage(buf[p], GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        char * base = (char *) ggml_backend_buffer_get_base(buf[p]);
        for (int lvl = 0; lvl < (has_lo ? 2 : 1); ++lvl) {
            ggml_tensor * t = pool[lvl][p];
            const int span = lvl == LLAMA_HOBBIT_HI ? hi_span : 1;
            t->ne[2] = int64_t(n_units)/span;
            t->nb[2] = unit_bytes[p]*span;
            t->nb[3] = t->nb[2]*t->ne[2];
            if (ggml_backend_tensor_alloc(buf[p], t, base) != GGML_STATUS_SUCCESS) {
                throw std::runtime_error("hobbit: cannot place a pool tensor in the expert cache");
            }
        }
        stats.cache_capacity_bytes += size;
    }
    slots.init(n_layer, n_expert, has_lo, (int) n_units, hi_span);
    evictor = llama_hobbit_make_evictor(policy.eviction);

    stats.budget_bytes = budget;
    stats.n_slots_hi   = slots.n_slots(LLAMA_HOBBIT_HI);
    stats.n_slots_lo   = has_lo ? slots.n_slots(LLAMA_HOBBIT_LO) : 0;
}

void llama_hobbit_cache::note_evicted(const std::vector<int> & evicted) {
    for (int idx : evicted) {
        stats.cache_bytes -= store.entry_bytes(slots.level_of(idx));
    }
}

void llama_hobbit_cache::release_locked(llama_hobbit_context & hctx) {
    if (hctx.pins.empty()) {
        return;
    }
    for (int idx : hctx.pins) {
        slots.unpin(idx);
    }
    hctx.pins.clear();
    cv.notify_all();
}

void llama_hobbit_cache::release(llama_hobbit_context & hctx) {
    std::lock_guard<std::mutex> lock(mtx);
    release_locked(hctx);
}

bool llama_hobbit_cache::load(llama_hobbit_context & hctx, const llama_hobbit_decision & d, std::string & err) {
    const int slot = slots.entry(d.idx).slot; // stable: the entry is pinned
    char * dst[LLAMA_HOBBIT_N_PROJ];
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        dst[p] = (char *) pool[d.lvl][p]->data + size_t(slot)*pool[d.lvl][p]->nb[2];
    }
    // one staging buffer per context, sized once for the largest read
    const size_t bounce = store.bounce_bytes();
    if (bounce > 0 && !hctx.bounce.reserve(bounce)) {
        err = format("hobbit: cannot allocate %zu bytes to read experts from %s", bounce, store.path(0).c_str());
        return false;
    }
    return store.read_expert(slots.layer_of(d.idx), d.expert, d.lvl, dst, hctx.bounce, err);
}

void llama_hobbit_cache::serve_wave(llama_hobbit_context & hctx, int il, int wave, int n_waves,
                                    const llama_hobbit_routes & routes, ggml_tensor * ids) {
    const auto t_start = std::chrono::steady_clock::now();
    clear_ids(ids);
    std::unique_lock<std::mutex> lk(mtx);
    try {
        serve_wave_locked(lk, hctx, il, wave, n_waves, routes, ids);
    } catch (const std::exception & e) {
        // e.g. std::bad_alloc in the books: nothing of this ubatch may be used
        if (!lk.owns_lock()) {
            lk.lock();
        }
        hctx.fail(format("hobbit: serving layer %d failed: %s", il, e.what()));
        clear_ids(ids);
    }
    stats.load_stall_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_start).count();
}

void llama_hobbit_cache::serve_wave_locked(std::unique_lock<std::mutex> & lk, llama_hobbit_context & hctx, int il,
                                           int wave, int n_waves, const llama_hobbit_routes & routes, ggml_tensor * ids) {
    // the slots of the previous wave or layer are no longer read: the graph has moved on
    release_locked(hctx);
    if (hctx.failed) {
        return; // the ubatch already failed: its output is discarded
    }

    llama_hobbit_job & job = hctx.job;
    const llama_hobbit_policy pol = policy;
    if (wave == 0) {
        tick++;
        stats.n_calls++;
        stats.routes_total += uint64_t(routes.n_used*routes.n_tokens);
        job.init(il, n_waves, n_expert, routes, pol.skip_threshold);
    }
    stats.n_waves++;

    // plan, waiting in turn while other contexts pin the room this wave needs
    llama_hobbit_plan_counts counts;
    hctx.decisions.clear();
    const uint64_t ticket = next_ticket++;
    queue.push_back(ticket);
    cv.wait(lk, [&]() {
        return queue.front() == ticket &&
            llama_hobbit_plan_wave(slots, job, wave, pol, *evictor, tick, hctx.decisions, counts);
    });
    queue.pop_front();
    cv.notify_all();

    note_evicted(counts.evicted);
    stats.demotions += counts.demotions;
    for (const auto & d : hctx.decisions) {
        hctx.pins.push_back(d.idx);
        if (d.action == LLAMA_HOBBIT_LOAD) {
            stats.cache_bytes += store.entry_bytes(d.lvl);
            stats.cache_peak_bytes = std::max(stats.cache_peak_bytes, stats.cache_bytes);
        }
    }

    // read outside the lock; the loading entries are pinned, nobody else touches their slots
    std::vector<std::string> errors(hctx.decisions.size());
    std::vector<bool>        ok(hctx.decisions.size(), true);
    lk.unlock();
    for (size_t i = 0; i < hctx.decisions.size(); ++i) {
        if (hctx.decisions[i].action == LLAMA_HOBBIT_LOAD) {
            ok[i] = load(hctx, hctx.decisions[i], errors[i]);
        }
    }
    lk.lock();

    bool changed = false;
    for (size_t i = 0; i < hctx.decisions.size(); ++i) {
        const llama_hobbit_decision & d = hctx.decisions[i];
        if (d.action != LLAMA_HOBBIT_LOAD) {
            continue;
        }
        changed = true;
        if (!ok[i]) {
            stats.failed_loads++;
            stats.cache_bytes -= store.entry_bytes(d.lvl);
            slots.release(d.idx);
            hctx.fail(errors[i]);
            continue;
        }
        slots.entry(d.idx).state = LLAMA_HOBBIT_READY;
        stats.bytes_loaded += store.entry_bytes(d.lvl);
        if (d.upgrade) {
            stats.upgrades++;
            const int lo = slots.index(il, d.expert, LLAMA_HOBBIT_LO);
            if (slots.cached(lo) && slots.entry(lo).pins == 0) {
                stats.cache_bytes -= store.entry_bytes(LLAMA_HOBBIT_LO);
                slots.release(lo); // the lo copy is now redundant
            }
        }
    }
    if (changed) {
        cv.notify_all();
    }

    // copies other contexts are loading must be ready before the matmuls read them
    cv.wait(lk, [&]() {
        for (const auto & d : hctx.decisions) {
            if (d.action == LLAMA_HOBBIT_WAIT && slots.entry(d.idx).state == LLAMA_HOBBIT_LOADING) {
                return false;
            }
        }
        return true;
    });
    for (const auto & d : hctx.decisions) {
        if (d.action == LLAMA_HOBBIT_WAIT && slots.entry(d.idx).state != LLAMA_HOBBIT_READY) {
            hctx.fail(format("hobbit: expert %d of layer %d could not be read by another context", d.expert, il));
        }
    }
    if (hctx.failed) {
        return;
    }

    // the slot of each route for each path; -1 leaves the route out of that path
    const bool last = wave == n_waves - 1;
    uint64_t unserved = 0;
    for (int64_t t = 0; t < routes.n_tokens; ++t) {
        for (int64_t r = 0; r < routes.n_used; ++r) {
            const int e = routes.expert(r, t);
            const int lvl = job.level[e];
            if (lvl >= 0 && job.wave[e] == wave) {
                id_at(ids, lvl, r, t) = slots.entry(slots.index(il, e, lvl)).slot;
                if (job.loaded[e]) {
                    (lvl == LLAMA_HOBBIT_HI ? stats.loads_hi : stats.loads_lo)++;
                    job.loaded[e] = 0;
                } else {
                    (lvl == LLAMA_HOBBIT_HI ? stats.hits_hi : stats.hits_lo)++;
                }
            } else if (lvl < 0 && ((wave == 0 && job.need[e] < 0.0f) || (last && job.need[e] >= 0.0f))) {
                stats.skipped++;
                unserved += job.need[e] >= 0.0f ? 1 : 0;
            }
        }
    }
    if (unserved > 0) {
        // the wave count and quotas make this impossible; say so loudly if it ever happens
        LLAMA_LOG_ERROR("%s: hobbit: %llu routes of layer %d found no room in %d waves\n", __func__,
                (unsigned long long) unserved, il, n_waves);
    }
}

llama_hobbit_policy llama_hobbit_cache::get_policy() {
    std::lock_guard<std::mutex> lock(mtx);
    return policy;
}

bool llama_hobbit_cache::set_policy(const llama_hobbit_policy & pol, std::string & err) {
    auto ev = llama_hobbit_make_evictor(pol.eviction);
    if (!(pol.skip_threshold >= 0.0f) || !(pol.hi_threshold >= pol.skip_threshold) ||
            !(pol.upgrade_threshold >= 0.0f) || !ev) {
        err = "hobbit: invalid policy (need 0 <= skip_threshold <= hi_threshold, upgrade_threshold >= 0, "
              "a known eviction)";
        return false;
    }
    std::lock_guard<std::mutex> lock(mtx);
    policy  = pol;
    evictor = std::move(ev);
    return true;
}

llama_hobbit_stats llama_hobbit_cache::get_stats() {
    std::lock_guard<std::mutex> lock(mtx);
    return stats;
}

void llama_hobbit_cache::reset_stats() {
    std::lock_guard<std::mutex> lock(mtx);
    const llama_hobbit_stats keep = stats;
    stats = {};
    stats.budget_bytes         = keep.budget_bytes;
    stats.cache_capacity_bytes = keep.cache_capacity_bytes;
    stats.cache_bytes          = keep.cache_bytes;
    stats.cache_peak_bytes     = keep.cache_bytes;
    stats.n_slots_hi           = keep.n_slots_hi;
    stats.n_slots_lo           = keep.n_slots_lo;
}
