#include "llama-hobbit-cache.h"

#include "llama-impl.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <cstdlib>
#include <stdexcept>

#if defined(_WIN32)
#error "HOBBIT expert store: pread-based I/O is POSIX only for now"
#else
#include <unistd.h>
#endif

namespace {

struct llama_hobbit_evictor_lru : llama_hobbit_evictor {
    double score(const llama_hobbit_entry & e, int, int) const override {
        return double(e.last_use);
    }
};

std::string fmt_bytes(size_t n) {
    if (n < 1024*1024) {
        return format("%.1f KiB", double(n)/1024.0);
    }
    return format("%.2f MiB", double(n)/(1024.0*1024.0));
}

} // namespace

void llama_hobbit_set_evictor(llama_hobbit_cache & cache, int32_t eviction) {
    switch (eviction) {
        case LLAMA_HOBBIT_EVICT_LRU:
        default:
            cache.evictor = std::make_unique<llama_hobbit_evictor_lru>();
    }
}

llama_hobbit_cache::~llama_hobbit_cache() {
    for (auto * b : buf) {
        if (b) {
            ggml_backend_buffer_free(b);
        }
    }
    if (ctx) {
        ggml_free(ctx);
    }
    for (int fd : fds) {
        close(fd);
    }
    for (int fd : fds_direct) {
        close(fd);
    }
    free(bounce);
}

void llama_hobbit_cache::init_pools(ggml_backend_buffer_type_t buft, size_t budget) {
    const int lo = has_lo ? LLAMA_HOBBIT_LO : LLAMA_HOBBIT_HI;

    size_t unit_total = 0;
    hi_span = 1;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        unit_bytes[p] = GGML_PAD(expert_bytes[lo][p], 64);
        unit_total   += unit_bytes[p];
        hi_span = std::max<int>(hi_span, (int) ((expert_bytes[LLAMA_HOBBIT_HI][p] + unit_bytes[p] - 1)/unit_bytes[p]));
    }
    n_units = (int) std::min<size_t>(budget/unit_total, size_t(n_layer)*n_expert*(has_lo ? 1 + hi_span : hi_span));
    // a hi copy must start on a multiple of hi_span
    n_units -= n_units % hi_span;

    const size_t min_units = size_t(n_expert_used)*(has_lo ? 1 : hi_span);
    if (size_t(n_units) < min_units) {
        throw std::runtime_error(format(
            "hobbit: expert budget %s is below the minimum %s (%d experts of one layer at %s)",
            fmt_bytes(budget).c_str(), fmt_bytes(min_units*unit_total).c_str(), n_expert_used,
            type_name[lo].c_str()));
    }

    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        const size_t size = size_t(n_units)*unit_bytes[p];
        buf[p] = ggml_backend_buft_alloc_buffer(buft, size);
        if (!buf[p]) {
            throw std::runtime_error(format("hobbit: failed to allocate %s of expert cache", fmt_bytes(size).c_str()));
        }
        ggml_backend_buffer_set_usage(buf[p], GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        char * base = (char *) ggml_backend_buffer_get_base(buf[p]);
        for (int lvl = 0; lvl < (has_lo ? 2 : 1); ++lvl) {
            ggml_tensor * t = pool[lvl][p];
            const int span = lvl == LLAMA_HOBBIT_HI ? hi_span : 1;
            t->ne[2] = n_units/span;
            t->nb[2] = unit_bytes[p]*span;
            t->nb[3] = t->nb[2]*t->ne[2];
            if (ggml_backend_tensor_alloc(buf[p], t, base) != GGML_STATUS_SUCCESS) {
                throw std::runtime_error("hobbit: failed to place a pool tensor");
            }
        }
        stats.cache_capacity_bytes += size;
    }
    stats.budget_bytes = budget;
    stats.n_slots_hi   = n_units/hi_span;
    stats.n_slots_lo   = has_lo ? n_units : 0;

    entries.assign(size_t(n_layer)*n_expert*LLAMA_HOBBIT_N_LVL, llama_hobbit_entry{});
    unit_owner.assign(n_units, -1);
}

void llama_hobbit_cache::evict(int idx) {
    llama_hobbit_entry & e = entries[idx];
    const int lvl  = idx % LLAMA_HOBBIT_N_LVL;
    const int span = lvl == LLAMA_HOBBIT_HI ? hi_span : 1;
    for (int u = e.slot*span; u < (e.slot + 1)*span; ++u) {
        unit_owner[u] = -1;
    }
    e.slot = -1;
    stats.cache_bytes -= entry_bytes(lvl);
}

// find room for (il, e, lvl), evicting the entries with the lowest score; entries used in the
// current evaluation (last_use == tick) are pinned. Returns false when everything is pinned.
bool llama_hobbit_cache::alloc_slot(int il, int e, int lvl) {
    const int span = lvl == LLAMA_HOBBIT_HI ? hi_span : 1;
    int    best       = -1;
    double best_score = std::numeric_limits<double>::infinity();
    int    best_n     = 0;
    for (int start = 0; start + span <= n_units; start += span) {
        double score = -std::numeric_limits<double>::infinity();
        int    n_occ = 0;
        bool   ok    = true;
        for (int u = start; u < start + span && ok; ++u) {
            const int owner = unit_owner[u];
            if (owner < 0) {
                continue;
            }
            const llama_hobbit_entry & occ = entries[owner];
            if (occ.last_use == tick) {
                ok = false;
                break;
            }
            const int occ_il = owner/(n_expert*LLAMA_HOBBIT_N_LVL);
            score = std::max(score, evictor->score(occ, occ_il, il));
            n_occ++;
        }
        if (!ok) {
            continue;
        }
        if (n_occ == 0) {
            best = start;
            best_n = 0;
            break;
        }
        if (score < best_score || (score == best_score && n_occ < best_n)) {
            best = start;
            best_score = score;
            best_n = n_occ;
        }
    }
    if (best < 0) {
        return false;
    }
    for (int u = best; u < best + span; ++u) {
        if (unit_owner[u] >= 0) {
            evict(unit_owner[u]);
        }
    }
    const int idx = entry_index(il, e, lvl);
    for (int u = best; u < best + span; ++u) {
        unit_owner[u] = idx;
    }
    entries[idx].slot = best/span;
    stats.cache_bytes += entry_bytes(lvl);
    stats.cache_peak_bytes = std::max(stats.cache_peak_bytes, stats.cache_bytes);
    return true;
}

// read [off, off + n) of fd into dst; false at end of file
static bool read_full(int fd, char * dst, size_t n, size_t off) {
    size_t done = 0;
    while (done < n) {
        const ssize_t r = pread(fd, dst + done, n - done, (off_t) (off + done));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return false;
        }
        if (r == 0) {
            break;
        }
        done += size_t(r);
    }
    return done == n;
}

void llama_hobbit_cache::load(int il, int e, int lvl) {
    constexpr size_t align = 4096;
    const int slot = entries[entry_index(il, e, lvl)].slot;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        const llama_hobbit_src & s = src_at(il, lvl, p);
        char * dst = (char *) pool[lvl][p]->data + size_t(slot)*pool[lvl][p]->nb[2];
        const size_t n   = expert_bytes[lvl][p];
        const size_t off = s.offs + size_t(e)*s.stride;
        bool ok;
        if (s.fd_direct >= 0) {
            // O_DIRECT wants aligned offsets and sizes: read the aligned superset, copy the part
            const size_t first = off & ~(align - 1);
            const size_t total = GGML_PAD(off + n - first, align);
            if (total > bounce_size) {
                free(bounce);
                bounce = nullptr;
                if (posix_memalign(&bounce, align, total) != 0) {
                    GGML_ABORT("hobbit: cannot allocate %zu bytes for O_DIRECT reads", total);
                }
                bounce_size = total;
            }
            // the file may end inside the last aligned block: a short read there is fine
            size_t done = 0;
            while (done < total) {
                const ssize_t r = pread(s.fd_direct, (char *) bounce + done, total - done, (off_t) (first + done));
                if (r < 0 && errno == EINTR) {
                    continue;
                }
                if (r <= 0) {
                    break;
                }
                done += size_t(r);
            }
            ok = done >= off + n - first;
            if (ok) {
                memcpy(dst, (const char *) bounce + (off - first), n);
            }
        } else {
            ok = read_full(s.fd, dst, n, off);
        }
        if (!ok) {
            GGML_ABORT("hobbit: reading expert %d of layer %d failed: %s", e, il, errno ? strerror(errno) : "unexpected end of file");
        }
        stats.bytes_loaded += n;
    }
}

void llama_hobbit_cache::route(int il, const ggml_tensor * selected, const ggml_tensor * weights, ggml_tensor * ids) {
    const auto t_start = std::chrono::steady_clock::now();

    const int64_t n_used   = selected->ne[0];
    const int64_t n_tokens = selected->ne[1];

    std::lock_guard<std::mutex> lock(mtx);
    const llama_hobbit_policy pol = policy;
    tick++;
    stats.n_calls++;

    auto sel_at = [&](int64_t r, int64_t t) {
        return *(const int32_t *) ((const char *) selected->data + r*selected->nb[0] + t*selected->nb[1]);
    };
    auto w_at = [&](int64_t r, int64_t t) {
        return *(const float *) ((const char *) weights->data + r*weights->nb[1] + t*weights->nb[2]);
    };
    auto id_at = [&](int lvl, int64_t r, int64_t t) -> int32_t & {
        return *(int32_t *) ((char *) ids->data + r*ids->nb[0] + t*ids->nb[1] + lvl*ids->nb[2]);
    };

    // the largest weight each expert gets from a route that is not skipped
    std::vector<float> need(n_expert, -1.0f);
    for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t r = 0; r < n_used; ++r) {
            const float w = w_at(r, t);
            if (w >= pol.skip_threshold) {
                float & m = need[sel_at(r, t)];
                m = std::max(m, w);
            }
        }
    }

    // decide and load, most important experts first so they get room first
    std::vector<int> order;
    for (int e = 0; e < n_expert; ++e) {
        if (need[e] >= 0.0f) {
            order.push_back(e);
        }
    }
    std::sort(order.begin(), order.end(), [&](int a, int b) { return need[a] > need[b]; });

    enum { SERVE_NONE = -1 };
    std::vector<int>  serve(n_expert, SERVE_NONE); // level serving each expert
    std::vector<bool> loaded(n_expert, false);     // first route of a loaded expert counts the load
    for (int e : order) {
        llama_hobbit_entry & hi = entries[entry_index(il, e, LLAMA_HOBBIT_HI)];
        llama_hobbit_entry & lo = entries[entry_index(il, e, LLAMA_HOBBIT_LO)];
        int lvl;
        bool need_load = true;
        if (hi.slot >= 0) {
            lvl = LLAMA_HOBBIT_HI;
            need_load = false;
        } else if (has_lo && lo.slot >= 0) {
            lvl = need[e] >= pol.upgrade_threshold ? LLAMA_HOBBIT_HI : LLAMA_HOBBIT_LO;
            need_load = lvl == LLAMA_HOBBIT_HI;
        } else {
            lvl = (!has_lo || need[e] >= pol.hi_threshold) ? LLAMA_HOBBIT_HI : LLAMA_HOBBIT_LO;
        }
        if (need_load) {
            const bool had_lo = has_lo && lo.slot >= 0;
            bool ok = alloc_slot(il, e, lvl);
            if (!ok && lvl == LLAMA_HOBBIT_HI && has_lo) {
                // no unpinned room for a hi copy: serve it at lo, cached or loaded
                lvl = LLAMA_HOBBIT_LO;
                if (lo.slot >= 0) {
                    need_load = false;
                    ok = true;
                } else {
                    ok = alloc_slot(il, e, lvl);
                }
            }
            if (!ok) {
                continue; // every slot is pinned by this evaluation: the expert's routes are skipped
            }
            if (need_load) {
                if (lvl == LLAMA_HOBBIT_HI && had_lo) {
                    if (lo.slot >= 0) {
                        evict(entry_index(il, e, LLAMA_HOBBIT_LO)); // the lo copy is now redundant
                    }
                    stats.upgrades++;
                }
                load(il, e, lvl);
                loaded[e] = true;
            }
        }
        llama_hobbit_entry & used = entries[entry_index(il, e, lvl)];
        used.last_use = tick;
        used.n_use++;
        serve[e] = lvl;
    }

    // write the slot of each route for each path; -1 leaves the route out of that path
    for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t r = 0; r < n_used; ++r) {
            const int e = sel_at(r, t);
            id_at(LLAMA_HOBBIT_HI, r, t) = -1;
            if (has_lo) {
                id_at(LLAMA_HOBBIT_LO, r, t) = -1;
            }
            stats.routes_total++;
            const int lvl = serve[e];
            if (w_at(r, t) < pol.skip_threshold || lvl == SERVE_NONE) {
                stats.skipped++;
                continue;
            }
            id_at(lvl, r, t) = entries[entry_index(il, e, lvl)].slot;
            if (loaded[e]) {
                (lvl == LLAMA_HOBBIT_HI ? stats.loads_hi : stats.loads_lo)++;
                loaded[e] = false;
            } else {
                (lvl == LLAMA_HOBBIT_HI ? stats.hits_hi : stats.hits_lo)++;
            }
        }
    }

    const auto t_end = std::chrono::steady_clock::now();
    stats.load_stall_ms += std::chrono::duration<double, std::milli>(t_end - t_start).count();
}
