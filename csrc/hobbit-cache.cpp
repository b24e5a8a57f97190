#include "hobbit-cache.h"

#include "hobbit-context.h"
#include "hobbit-evict.h"

#include "llama-impl.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace {

llama_hobbit_evict_weights weights_of(const llama_hobbit_policy & p) {
    llama_hobbit_evict_weights w;
    w.recency   = p.w_recency;
    w.frequency = p.w_frequency;
    w.hi_need   = p.w_hi_need;
    w.distance  = p.w_distance;
    return w;
}

std::string fmt_bytes(uint64_t n) {
    if (n < 1024*1024) {
        return format("%.1f KiB", double(n)/1024.0);
    }
    return format("%.2f MiB", double(n)/(1024.0*1024.0));
}

constexpr size_t POOL_PAD = 4096;

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

// the policy's evictor, except that it never evicts what a prefetch must leave alone: copies
// prefetched and not used yet, and experts of the layers from the one served to the deepest
// predicted
struct prefetch_guard : llama_hobbit_evictor {
    const llama_hobbit_evictor & base;
    int first, last;
    prefetch_guard(const llama_hobbit_evictor & base, int first, int last) : base(base), first(first), last(last) {}

    double score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const override {
        if (e.prefetched || (il >= first && il <= last)) {
            return std::numeric_limits<double>::infinity();
        }
        return base.score(e, il, now);
    }
};

} // namespace

llama_hobbit_cache::~llama_hobbit_cache() {
    loader.stop(); // no read may land in memory freed below
    for (const auto & job : copier_prefetches) { // nor a prefetch still on the copier's stream
        if (job->copy_event) {
            copier.wait(job->copy_event);
            job->copy_event = nullptr;
        }
    }
    for (auto * b : buf) {
        if (b) {
            ggml_backend_buffer_free(b);
        }
    }
    if (ctx) {
        ggml_free(ctx);
    }
    for (void * a : arena) {
        free(a);
    }
}

uint64_t llama_hobbit_cache::min_budget() const {
    return min_bytes;
}

void llama_hobbit_cache::init_pools(ggml_backend_buffer_type_t buft, uint64_t budget) {
    const int lo = has_lo ? LLAMA_HOBBIT_LO : LLAMA_HOBBIT_HI;

    // with O_DIRECT, units are whole blocks, so that block-aligned experts in the file are read
    // straight into their slots without a copy through a staging buffer
    // (VRAM slots are filled by copies, never by reads). On the GPU, CUDA's vector kernels take a
    // pool's expert stride in whole blocks of its type: a unit, and so a hi copy's span of
    // units, is a whole number of blocks of either level (unified-memory slots, which the GPU
    // reads too, are then read into through the staging buffer when O_DIRECT is on).
    size_t unit_align = !gpu && store.any_direct() ? llama_hobbit_store::DIRECT_ALIGN : 64;
    if (gpu) {
        for (int lvl = 0; lvl < n_levels(); ++lvl) {
            for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
                unit_align = std::lcm(unit_align, ggml_type_size(pool[lvl][p]->type));
            }
        }
    }
    auto round_up = [](size_t n, size_t align) { return (n + align - 1)/align*align; }; // any alignment
    auto align_up = [&](size_t n) { return round_up(n, unit_align); };
    uint64_t unit_total = 0;
    int hi_span = 1;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        unit_bytes[p] = align_up(store.expert_bytes[lo][p]);
        unit_total   += unit_bytes[p];
        hi_span = std::max<int>(hi_span, (int) ((store.expert_bytes[LLAMA_HOBBIT_HI][p] + unit_bytes[p] - 1)/unit_bytes[p]));
    }
    min_bytes = unit_total*uint64_t(hi_span); // one hi copy in lo units
    // a budget that holds every hi expert in slots of its own size holds them all: units of one
    // hi expert then (a hi copy spanning lo units wastes their rounding, ~6% for q8_0 over q4_k,
    // and 100% would fall short), each of which may hold a lo copy instead. Where those units,
    // being whole blocks of both levels' types on the GPU (or O_DIRECT blocks), round each
    // expert up by a few KiB and so still fall short, units of whole hi blocks with no lo slots:
    // every load is then at hi (a policy that never wants hi is refused by set_policy)
    n_served = (int) std::count(serves.begin(), serves.end(), true);
    bool lo_slots = has_lo;
    if (has_lo) {
        const uint64_t n_all = uint64_t(n_served)*n_expert;
        size_t hi_align = 64;
        for (int p = 0; p < LLAMA_HOBBIT_N_PROJ && gpu; ++p) {
            hi_align = std::lcm(hi_align, ggml_type_size(pool[LLAMA_HOBBIT_HI][p]->type));
        }
        for (const bool with_lo : { true, false }) {
            size_t hi_unit[LLAMA_HOBBIT_N_PROJ];
            uint64_t hi_total = 0;
            for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
                const size_t hi = store.expert_bytes[LLAMA_HOBBIT_HI][p];
                hi_unit[p] = with_lo ? align_up(std::max(hi, store.expert_bytes[lo][p])) : round_up(hi, hi_align);
                hi_total  += hi_unit[p];
            }
            if (n_all > 0 && budget/hi_total >= n_all && hi_total < unit_total*hi_span) {
                std::copy(hi_unit, hi_unit + LLAMA_HOBBIT_N_PROJ, unit_bytes);
                unit_total = hi_total;
                hi_span    = 1;
                lo_slots   = with_lo;
                break;
            }
        }
    }
    // never more units than it takes to hold every expert at both levels
    const uint64_t most = uint64_t(n_layer)*n_expert*(lo_slots ? 1 + hi_span : 1);
    uint64_t n_units = std::min<uint64_t>(budget/unit_total, std::min<uint64_t>(most, std::numeric_limits<int32_t>::max()));
    n_units -= n_units % hi_span; // a hi copy starts on a multiple of hi_span

    slots.hi_span = hi_span;
    if (budget < min_bytes || n_units < uint64_t(hi_span)) {
        throw std::runtime_error(format(
            "hobbit: expert budget %s is below the minimum %s (one expert at %s)",
            fmt_bytes(budget).c_str(), fmt_bytes(min_budget()).c_str(), type_name[LLAMA_HOBBIT_HI].c_str()));
    }

    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        const size_t size = size_t(n_units)*unit_bytes[p];
        if (unified) {
            // pinned host memory the GPU reads directly, presented as a buffer of the GPU's type
            // (page-aligned, so O_DIRECT reads land in it); padded as VRAM is below
            buf[p] = llama_hobbit_wrap_for_device(ggml_backend_buft_alloc_buffer(buft, size + POOL_PAD), device_buft);
        } else if (ggml_backend_buft_is_host(buft)) {
            // host memory of our own, block-aligned for O_DIRECT reads into the slots
            if (posix_memalign(&arena[p], llama_hobbit_store::DIRECT_ALIGN, size) != 0) {
                arena[p] = nullptr;
                throw std::runtime_error(format("hobbit: cannot allocate %s of expert cache", fmt_bytes(size).c_str()));
            }
            buf[p] = ggml_backend_cpu_buffer_from_ptr(arena[p], size);
        } else {
            // VRAM: the matmul kernels may read a little past the last expert (MMQ), so pad it
            buf[p] = ggml_backend_buft_alloc_buffer(buft, size + POOL_PAD);
        }
        if (!buf[p]) {
            throw std::runtime_error(format("hobbit: cannot allocate %s of expert cache%s", fmt_bytes(size).c_str(),
                    gpu && !unified ? " in VRAM (lower the expert budget)" : ""));
        }
        if (!ggml_backend_buft_is_host(buft) || unified) {
            ggml_backend_buffer_clear(buf[p], 0);
        }
        ggml_backend_buffer_set_usage(buf[p], GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        char * base = (char *) ggml_backend_buffer_get_base(buf[p]);
        for (int lvl = 0; lvl < n_levels(); ++lvl) {
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
    slots.init(n_layer, n_expert, lo_slots, (int) n_units, hi_span);
    all_hi_fit = slots.n_slots(LLAMA_HOBBIT_HI) >= int64_t(n_served)*n_expert;
    evictor = llama_hobbit_make_evictor(policy.eviction, weights_of(policy));

    stats.budget_bytes = budget;
    stats.n_slots_hi   = slots.n_slots(LLAMA_HOBBIT_HI);
    stats.n_slots_lo   = lo_slots ? slots.n_slots(LLAMA_HOBBIT_LO) : 0;
}

void llama_hobbit_cache::note_evicted(const std::vector<int> & evicted) {
    for (int idx : evicted) {
        stats.cache_bytes -= store.entry_bytes(slots.level_of(idx));
        llama_hobbit_entry & e = slots.entry(idx);
        if (e.prefetched) {
            stats.prefetch_wasted++;
            e.prefetched = 0;
            n_prefetched--;
        }
    }
}

void llama_hobbit_cache::start_loader(int n_threads) {
    loader.start(&store, n_threads, [this](const llama_hobbit_load_ptr & job) { on_loaded(job); },
                 gpu ? &host : nullptr, staging_buft);
    stats.io_threads = n_threads;
}

std::vector<int> llama_hobbit_cache::next_moe_layers(int il, int n) const {
    std::vector<int> out;
    for (int l = il + 1; l < n_layer && (int) out.size() < n; ++l) {
        if (serves[l] && gate_inp[l]) {
            out.push_back(l);
        }
    }
    return out;
}

void llama_hobbit_cache::load_routers() {
    router_host.assign(n_layer, {});
    for (int il = 0; il < n_layer; ++il) {
        const ggml_tensor * w = gate_inp[il];
        // a tensor can be read back as floats: F32, or a type with a to_float
        const auto readable = [](const ggml_tensor * t) {
            return !t || t->type == GGML_TYPE_F32 || ggml_get_type_traits(t->type)->to_float;
        };
        if (!serves[il] || !w || !readable(w) || !readable(gate_inp_b[il]) || !readable(probs_bias[il])) {
            continue; // no warming for this layer
        }
        // a tensor (or a bias) read back as floats, row by row
        const auto floats = [](const ggml_tensor * t) {
            std::vector<char> raw(ggml_nbytes(t));
            ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
            std::vector<float> out(size_t(ggml_nelements(t)));
            for (int64_t r = 0; r < ggml_nrows(t); ++r) {
                const char * row = raw.data() + r*t->nb[1];
                if (t->type == GGML_TYPE_F32) {
                    memcpy(out.data() + r*t->ne[0], row, t->ne[0]*sizeof(float));
                } else {
                    ggml_get_type_traits(t->type)->to_float(row, out.data() + r*t->ne[0], t->ne[0]);
                }
            }
            return out;
        };
        llama_hobbit_router_host & r = router_host[il];
        r.n_embd   = w->ne[0];
        r.n_expert = w->ne[1];
        r.w        = floats(w);
        if (gate_inp_b[il]) {
            r.b = floats(gate_inp_b[il]);
        }
        if (probs_bias[il]) {
            r.sel_bias = floats(probs_bias[il]);
        }
    }
}

bool llama_hobbit_cache::warm_target(int il, const float * x, int gating, int & expert, int & lvl) {
    if (il < 0 || il >= (int) router_host.size() || router_host[il].empty()) {
        return false;
    }
    const llama_hobbit_router_host & r = router_host[il];
    std::vector<float> logits(size_t(r.n_expert));
    r.logits(x, logits.data());
    llama_hobbit_prediction pred;
    llama_hobbit_predict((const char *) logits.data(), 0, n_expert, 1, n_expert_used, 0, gating,
                         r.sel_bias.empty() ? nullptr : r.sel_bias.data(), pred);
    std::vector<uint8_t> cached(size_t(n_expert), 0);
    llama_hobbit_policy pol;
    {
        std::lock_guard<std::mutex> lock(mtx);
        for (int e = 0; e < n_expert; ++e) {
            cached[e] = slots.cached_any(il, e) ? 1 : 0;
        }
        pol = effective_policy();
    }
    if (!pol.cpu_compute) {
        return false; // every miss is copied: the CPU computes none
    }
    expert = llama_hobbit_warm_pick(pred.need, cached);
    if (expert < 0 || pred.need[expert] < pol.skip_threshold) {
        return false;
    }
    lvl = llama_hobbit_miss_level(pol, slots.has_lo, pred.need[expert]);
    return llama_hobbit_cpu_expert_slices(cpu_weights(il, lvl)) > 0;
}

void llama_hobbit_cache::note_warm(bool used) {
    std::lock_guard<std::mutex> lock(mtx);
    (used ? stats.warm_used : stats.warm_posted)++;
}

int llama_hobbit_cache::graph_depth() {
    std::lock_guard<std::mutex> lock(mtx);
    if (resident) {
        return 0;
    }
    if (always_predict) {
        return LLAMA_HOBBIT_PREFETCH_MAX;
    }
    if (policy.prefetch_depth == LLAMA_HOBBIT_PREFETCH_AUTO) {
        // the CPU tier's auto depth follows the predictions' accuracy, so it always predicts;
        // the GPU tier's times its depths, and the pass after a switch is not timed (the graph
        // of the first pass at a new depth was built for the old one)
        return gpu && depth_trial.depth == 0 ? 0 : LLAMA_HOBBIT_PREFETCH_MAX;
    }
    return policy.prefetch_depth > 0 ? LLAMA_HOBBIT_PREFETCH_MAX : 0;
}

llama_hobbit_policy llama_hobbit_cache::effective_policy() const {
    llama_hobbit_policy pol = policy;
    if (all_hi_fit && pol.hi_threshold <= 1.0f) {
        // the slots hold every hi expert: a lo copy would save one read once and cost quality
        // for good, so every load is at hi, a prefetch of an expert that only the widened set
        // predicted (need -1) too (a policy that never wants hi, hi_threshold > 1, is left as
        // it is)
        pol.hi_threshold = -std::numeric_limits<float>::infinity();
    }
    return pol;
}

llama_hobbit_clock llama_hobbit_cache::clock_at(int il) const {
    llama_hobbit_clock c;
    c.tick    = tick;
    c.pass    = pass;
    c.il_now  = il;
    c.n_layer = n_layer;
    return c;
}

llama_hobbit_load_ptr llama_hobbit_cache::make_load(int idx, int depth) {
    auto job = std::make_shared<llama_hobbit_load>();
    job->idx    = idx;
    job->il     = slots.layer_of(idx);
    job->expert = slots.expert_of(idx);
    job->lvl    = slots.level_of(idx);
    job->depth  = depth;
    job->bytes  = store.entry_bytes(job->lvl);
    const int slot = slots.entry(idx).slot;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        job->dst[p] = (char *) pool[job->lvl][p]->data + size_t(slot)*pool[job->lvl][p]->nb[2];
        job->device[p] = gpu && !unified ? pool[job->lvl][p] : nullptr; // unified memory: read into it
    }
    in_flight[idx] = job;
    return job;
}

void llama_hobbit_cache::on_loaded(const llama_hobbit_load_ptr & job) {
    std::lock_guard<std::mutex> lock(mtx);
    on_loaded_locked(job);
}

bool llama_hobbit_cache::host_copy(int il, int e, int lvl, int slot, llama_hobbit_copy & c) const {
    c.bytes = 0;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        c.dst[p] = pool[lvl][p];
        c.off[p] = size_t(slot)*pool[lvl][p]->nb[2];
        c.src[p] = host.part(store, il, e, lvl, p);
        c.n[p]   = store.expert_bytes[lvl][p];
        c.bytes += c.n[p];
        if (!c.src[p]) {
            return false;
        }
    }
    return true;
}

bool llama_hobbit_cache::host_copy_rows(int il, int e, int lvl, int slot, int64_t row0, int64_t row1,
                                        llama_hobbit_copy & c) const {
    if (!host_copy(il, e, lvl, slot, c)) {
        return false;
    }
    c.bytes = 0;
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        const ggml_tensor * t = pool[lvl][p];
        if (p == LLAMA_HOBBIT_DOWN) {
            // [n_ff, n_embd]: those columns of every row
            const size_t col = ggml_row_size(t->type, row0);
            c.off[p]  += col;
            c.src[p]  += col;
            c.n[p]     = ggml_row_size(t->type, row1 - row0);
            c.rows[p]  = (size_t) t->ne[1];
            c.pitch[p] = t->nb[1];
        } else {
            // [n_embd, n_ff]: those rows
            c.off[p] += size_t(row0)*t->nb[1];
            c.src[p] += size_t(row0)*t->nb[1];
            c.n[p]    = size_t(row1 - row0)*t->nb[1];
        }
        c.bytes += c.n[p]*c.rows[p];
    }
    return true;
}

int64_t llama_hobbit_cache::split_row(int il, int lvl) const {
    if (lvl >= LLAMA_HOBBIT_N_LVL || (lvl == LLAMA_HOBBIT_LO && !has_lo)) {
        return 0;
    }
    const llama_hobbit_cpu_weights w = cpu_weights(il, lvl);
    const int n_slices = llama_hobbit_cpu_expert_slices(w);
    const int head     = llama_hobbit_cpu_split_slices(n_slices, split_share);
    return head > 0 && head < n_slices ? llama_hobbit_cpu_slice_row(w, head, n_slices) : 0;
}

bool llama_hobbit_cache::submit_split_part(const llama_hobbit_load_ptr & job) {
    llama_hobbit_copy c;
    const int slot = slots.entry(job->idx).slot;
    if (!copier_takes(job) || job->split_row <= 0 ||
            !host_copy_rows(job->il, job->expert, job->lvl, slot, job->split_row, pool[job->lvl][LLAMA_HOBBIT_GATE]->ne[1], c)) {
        return false;
    }
    job->submitted_at = std::chrono::steady_clock::now();
    job->part_event   = copier.submit(c);
    if (!job->part_event) {
        return false;
    }
    job->head_bytes = job->bytes - c.bytes;
    loader.demand_started(); // finished when the whole expert has landed (complete_copy)
    return true;
}

void llama_hobbit_cache::submit_split_head(const llama_hobbit_load_ptr & job) {
    llama_hobbit_copy c;
    const int slot = slots.entry(job->idx).slot;
    if (host_copy_rows(job->il, job->expert, job->lvl, slot, 0, job->split_row, c)) {
        job->copy_event = copier.submit(c);
    }
    job->direct   = job->copy_event != nullptr;
    job->copy_seq = job->direct ? ++copy_seq : 0;
    if (!job->direct) {
        // no event for it: an I/O thread copies the whole expert (the part already there gets
        // the same bytes again, so what the GPU reads of it does not change)
        loader.demand_finished();
        loader.submit(job);
    }
}

void llama_hobbit_cache::wait_split_parts(std::unique_lock<std::mutex> & lk, std::vector<llama_hobbit_load_ptr> & loads,
                                          llama_hobbit_split_wait & w) {
    for (size_t i = 0; i < loads.size();) {
        const llama_hobbit_load_ptr job = loads[i];
        if (!job->part_event) {
            ++i;
            continue;
        }
        ggml_backend_event_t ev = job->part_event;
        job->part_event = nullptr;
        lk.unlock();
        const double blocked = copier.wait(ev);
        lk.lock();
        w.bytes  += job->bytes - job->head_bytes;
        w.done_at = std::max(w.done_at, std::chrono::steady_clock::now());
        w.timed   = w.timed && blocked > 0.02; // it was still running: it ended now
        loads.erase(loads.begin() + i);
        if (job->copy_event) {
            copier_prefetches.push_back(job); // lands with the prefetches: nobody waits for it now
        }
    }
}

bool llama_hobbit_cache::submit_copy(const llama_hobbit_load_ptr & job) {
    llama_hobbit_copy c;
    if (!copier_takes(job) || !host_copy(job->il, job->expert, job->lvl, slots.entry(job->idx).slot, c)) {
        return false;
    }
    job->submitted_at = std::chrono::steady_clock::now();
    job->copy_event   = copier.submit(c);
    job->direct       = job->copy_event != nullptr;
    job->copy_seq     = job->direct ? ++copy_seq : 0;
    if (job->direct && !job->prefetch()) {
        loader.demand_started(); // the loader's prefetches wait for the bus to be idle
    }
    return job->direct;
}

void llama_hobbit_cache::complete_copy(std::unique_lock<std::mutex> & lk, const llama_hobbit_load_ptr & job) {
    ggml_backend_event_t ev   = job->copy_event;
    ggml_backend_event_t part = job->part_event; // a split miss's first part, if its wave did not wait for it
    job->copy_event = nullptr; // this context waits for it; no one else does
    job->part_event = nullptr;
    lk.unlock();
    const double blocked = copier.wait(ev);
    if (part) {
        copier.wait(part); // queued before ev: done, back to the pool
    }
    const auto   now     = std::chrono::steady_clock::now();
    lk.lock();
    job->read_ms = std::chrono::duration<double, std::milli>(now - job->submitted_at).count();
    job->timed   = blocked > 0.02; // it was still running: it ended now
    if (!job->prefetch()) {
        loader.demand_finished();
    }
    copy_seq_done = std::max(copy_seq_done, job->copy_seq); // and so has every copy queued before it
    on_loaded_locked(job);
}

void llama_hobbit_cache::submit_prefetch_copies() {
    // behind the wave's demand copies on the copier's stream: they use the bus while the CPU
    // computes its misses and the GPU the next layer's attention
    for (const auto & job : deferred_prefetches) {
        if (submit_copy(job)) {
            copier_prefetches.push_back(job);
        } else {
            loader.submit(job);
        }
    }
    deferred_prefetches.clear();
}

void llama_hobbit_cache::complete_prefetch_copies(std::unique_lock<std::mutex> & lk, bool all) {
    // those queued before a demand copy that is done are done too (one stream): waiting for
    // them costs nothing; `all` waits for the others as well
    for (size_t i = 0; i < copier_prefetches.size();) {
        const llama_hobbit_load_ptr job = copier_prefetches[i];
        if (!job->copy_event) { // another wave waited for it
            copier_prefetches.erase(copier_prefetches.begin() + i);
        } else if (all || job->copy_seq <= copy_seq_done) {
            copier_prefetches.erase(copier_prefetches.begin() + i);
            complete_copy(lk, job);
            i = 0; // the lock was dropped meanwhile
        } else {
            ++i;
        }
    }
}

size_t llama_hobbit_cache::prefetch_copy_backlog() const {
    size_t n = 0;
    for (const auto & job : copier_prefetches) {
        n += job->copy_event && job->copy_seq > copy_seq_done ? (job->head_bytes ? job->head_bytes : job->bytes) : 0;
    }
    return n;
}

void llama_hobbit_cache::drain_copies(std::unique_lock<std::mutex> & lk, const std::vector<llama_hobbit_load_ptr> & jobs) {
    for (const auto & l : std::vector<llama_hobbit_load_ptr>(jobs)) { // a copy: the lock is dropped meanwhile
        if (l->copy_event) {
            complete_copy(lk, l);
        }
    }
}

void llama_hobbit_cache::calibrate_copies() {
    int il = 0;
    while (il < n_layer && !serves[il]) {
        ++il;
    }
    llama_hobbit_copy c;
    // slot 0 of the hi pool: no entry holds it yet
    if (!copier.active() || il == n_layer || slots.n_slots(LLAMA_HOBBIT_HI) < 1 || !host_copy(il, 0, LLAMA_HOBBIT_HI, 0, c)) {
        return;
    }
    for (int i = 0; i < 2; ++i) { // the first one warms up the stream
        const auto t0 = std::chrono::steady_clock::now();
        ggml_backend_event_t ev = copier.submit(c);
        if (!ev) {
            return;
        }
        copier.wait(ev);
        if (i == 1) {
            cost.note_copy(c.bytes, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
    }
}

void llama_hobbit_cache::make_resident() {
    moe_index.assign(n_layer, -1);
    int m = 0;
    for (int il = 0; il < n_layer; ++il) {
        moe_index[il] = serves[il] ? m++ : -1;
    }
    if (!gpu || unified || !host.resident() || !copier.active() || !all_hi_fit || resident_mode == 0 ||
            cpu_path_mode > 0) {
        return;
    }
    std::lock_guard<std::mutex> lock(mtx);
    for (int il = 0; il < n_layer; ++il) {
        for (int e = 0; serves[il] && e < n_expert; ++e) {
            const int slot = moe_index[il]*n_expert + e;
            const int idx  = slots.index(il, e, LLAMA_HOBBIT_HI);
            llama_hobbit_copy c;
            if (!host_copy(il, e, LLAMA_HOBBIT_HI, slot, c) || !slots.place(idx, slot)) {
                throw std::runtime_error(format("hobbit: expert %d of layer %d cannot be placed in VRAM", e, il));
            }
            ggml_backend_event_t ev = copier.submit(c);
            if (!ev) {
                throw std::runtime_error("hobbit: no event for a copy to VRAM");
            }
            copier.wait(ev);
            stats.cache_bytes      += c.bytes;
            stats.bytes_loaded     += c.bytes;
            stats.bytes_over_bus   += c.bytes;
            stats.host_hits++;
        }
    }
    stats.cache_peak_bytes = stats.cache_bytes;
    resident = true;
}

void llama_hobbit_cache::count_resident_routes(int64_t n_tokens) {
    if (!resident) {
        return;
    }
    const uint64_t routes = uint64_t(n_served)*uint64_t(n_expert_used)*uint64_t(std::max<int64_t>(n_tokens, 0));
    std::lock_guard<std::mutex> lock(mtx);
    stats.n_calls      += uint64_t(n_served);
    stats.routes_total += routes;
    stats.hits_hi      += routes;
}

void llama_hobbit_cache::on_loaded_locked(const llama_hobbit_load_ptr & job) {
    in_flight.erase(job->idx);
    stats.read_ms += job->read_ms;
    job->done_at = std::chrono::steady_clock::now();
    if (job->ok) {
        slots.entry(job->idx).state = LLAMA_HOBBIT_READY;
        stats.bytes_loaded += job->bytes;
        stats.bytes_prefetched += job->prefetch() ? job->bytes : 0;
        if (gpu && !unified) {
            stats.bytes_over_bus += job->bytes;
            stats.host_hits      += host.resident() ? 1 : 0;
        }
    } else {
        stats.failed_loads++;
        stats.cache_bytes -= store.entry_bytes(job->lvl);
        if (slots.entry(job->idx).prefetched) {
            slots.entry(job->idx).prefetched = 0;
            n_prefetched--;
        }
        slots.release(job->idx);
    }
    job->done = true;
    cv.notify_all();
}

void llama_hobbit_cache::expire_prefetches(int il) {
    // a prefetch for this layer that its evaluation did not use was a wrong guess: it stays
    // cached, as any copy, but no longer counts against the prefetch cap nor is protected
    for (int e = 0; e < n_expert; ++e) {
        for (int lvl = 0; lvl < LLAMA_HOBBIT_N_LVL; ++lvl) {
            llama_hobbit_entry & en = slots.entry(slots.index(il, e, lvl));
            if (en.prefetched) {
                en.prefetched = 0;
                n_prefetched--;
                stats.prefetch_wasted++;
            }
        }
    }
}

bool llama_hobbit_cache::take_back_prefetch(std::unique_lock<std::mutex> & lk, int idx) {
    auto it = in_flight.find(idx);
    if (it != in_flight.end() && it->second->copy_event && (it->second->prefetch() || it->second->split_row > 0)) {
        // a prefetch or a split miss's first rows queued on the copier: its room is free once it lands
        const llama_hobbit_load_ptr job = it->second;
        complete_copy(lk, job);
        return true;
    }
    auto queued = it == in_flight.end() ? deferred_prefetches.end()
                                        : std::find(deferred_prefetches.begin(), deferred_prefetches.end(), it->second);
    if (queued != deferred_prefetches.end()) {
        deferred_prefetches.erase(queued); // not on the copier's stream yet: taken back as a queued read
    } else if (it == in_flight.end() || !it->second->prefetch() || !loader.take_back(it->second)) {
        return false; // being read: wait for it
    }
    const llama_hobbit_load_ptr job = it->second;
    in_flight.erase(it);
    note_evicted({ job->idx });
    slots.release(job->idx);
    job->done = true;
    return true;
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
    std::unique_lock<std::mutex> lock(mtx);
    drain_copies(lock, hctx.loads);
    release_locked(hctx);
    complete_prefetch_copies(lock, /*all =*/ false);
    cv.notify_all();
}

template <typename F>
void llama_hobbit_cache::guarded(llama_hobbit_context & hctx, int il, ggml_tensor * ids, F && body) {
    const auto t_start = std::chrono::steady_clock::now();
    clear_ids(ids);
    std::unique_lock<std::mutex> lk(mtx);
    try {
        body(lk, t_start);
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

void llama_hobbit_cache::serve_wave(llama_hobbit_context & hctx, int il, int wave, int n_waves,
                                    const llama_hobbit_routes & routes, ggml_tensor * ids, bool cpu, bool split) {
    guarded(hctx, il, ids, [&](std::unique_lock<std::mutex> & lk, std::chrono::steady_clock::time_point) {
        serve_wave_locked(lk, hctx, il, wave, n_waves, routes, ids, cpu, split);
    });
}

void llama_hobbit_cache::finish_wave(llama_hobbit_context & hctx, int il, int wave, const llama_hobbit_routes & routes,
                                     ggml_tensor * ids) {
    guarded(hctx, il, ids, [&](std::unique_lock<std::mutex> & lk, std::chrono::steady_clock::time_point t_start) {
        // the CPU's experts of this wave were computed between the route op and now (the
        // stats' time); the planner's rate counts the threads' compute only (hobbit-graph.cpp)
        const double cpu_ms  = std::chrono::duration<double, std::milli>(t_start - hctx.routed_at).count();
        const double busy_ms = hctx.cpu_busy_ms > 0.0 ? std::min(hctx.cpu_busy_ms, cpu_ms) : cpu_ms;
        const size_t cpu_total = hctx.cpu_bytes[0] + hctx.cpu_bytes[1];
        if (cpu_total > 0) {
            stats.cpu_ms += cpu_ms;
            if (hctx.cpu_threads > 0 && (stats.cpu_threads_min == 0 || hctx.cpu_threads < stats.cpu_threads_min)) {
                stats.cpu_threads_min = hctx.cpu_threads;
            }
            // both levels ran one after the other in that time: share it by bytes
            for (int lvl = 0; lvl < LLAMA_HOBBIT_N_LVL; ++lvl) {
                cost.note_cpu(lvl, hctx.cpu_bytes[lvl], busy_ms*double(hctx.cpu_bytes[lvl])/double(cpu_total),
                              hctx.cpu_probe);
            }
        }
        finish_wave_locked(lk, hctx, il, wave, routes, ids);
    });
}

void llama_hobbit_cache::plan_cpu(llama_hobbit_context & hctx, const llama_hobbit_policy & pol, bool split) {
    // the misses of the layer, most important first, at the level the policy wants for each
    llama_hobbit_job & job = hctx.job;
    hctx.cpu_probe = false;
    std::vector<llama_hobbit_miss> misses;
    for (int e : job.pending) {
        if (slots.cached_any(job.il, e)) {
            continue; // a hit (or on its way): served from its slot
        }
        const int lvl = llama_hobbit_miss_level(pol, slots.has_lo, job.need[e]);
        const int64_t row = split ? split_row(job.il, lvl) : 0;
        const double share = row > 0 ? double(row)/double(pool[lvl][LLAMA_HOBBIT_GATE]->ne[1]) : 0.0;
        misses.push_back({ e, lvl, store.entry_bytes(lvl), share });
    }
    if (misses.empty()) {
        return;
    }
    // cpu_compute 2: every miss on the CPU; 3: every miss split where it can be (diagnostics)
    std::vector<uint8_t> place;
    if (pol.cpu_compute == 2 || pol.cpu_compute == 3) {
        for (const auto & m : misses) {
            place.push_back(pol.cpu_compute == 3 && m.split > 0.0 ? LLAMA_HOBBIT_PLACE_SPLIT : LLAMA_HOBBIT_PLACE_CPU);
        }
    } else {
        place = llama_hobbit_plan_cpu(cost, misses, loader.bytes_ahead_of_demand() + prefetch_copy_backlog());
    }
    hctx.cpu_probe = pol.cpu_compute == 1 && cost.probed;
    for (size_t i = 0; i < misses.size(); ++i) {
        // a type or shape the CPU path's kernel cannot slice is always copied
        if (place[i] != LLAMA_HOBBIT_PLACE_COPY && llama_hobbit_cpu_expert_slices(cpu_weights(job.il, misses[i].lvl)) == 0) {
            place[i] = LLAMA_HOBBIT_PLACE_COPY;
        }
    }
    std::vector<int> rest;
    for (size_t i = 0; i < misses.size(); ++i) {
        if (place[i] == LLAMA_HOBBIT_PLACE_SPLIT) {
            job.cpu[misses[i].expert] = 2; // loaded as any miss, its CPU rows accounted once its copy is queued
        } else if (place[i] == LLAMA_HOBBIT_PLACE_CPU) {
            const llama_hobbit_miss & m = misses[i];
            job.level[m.expert] = (int8_t) m.lvl;
            job.wave[m.expert]  = 0;
            job.cpu[m.expert]   = 1;
            hctx.cpu_bytes[m.lvl] += m.bytes;
            stats.cpu_bytes       += m.bytes;
        }
    }
    for (int e : job.pending) {
        if (job.cpu[e] != 1) {
            rest.push_back(e);
        }
    }
    job.pending = rest;
}

void llama_hobbit_cache::serve_wave_locked(std::unique_lock<std::mutex> & lk, llama_hobbit_context & hctx, int il,
                                           int wave, int n_waves, const llama_hobbit_routes & routes, ggml_tensor * ids,
                                           bool cpu, bool split) {
    // the slots of the previous wave or layer are no longer read: the graph has moved on (and
    // copies a graph that stopped early left are waited for)
    drain_copies(lk, hctx.loads);
    release_locked(hctx);
    complete_prefetch_copies(lk, false);
    if (hctx.failed) {
        return; // the ubatch already failed: its output is discarded
    }

    llama_hobbit_job & job = hctx.job;
    const llama_hobbit_policy pol = effective_policy();
    if (wave == 0) {
        if (il <= hctx.il_prev) {
            pass++; // a new walk through the layers
            time_pass(hctx, routes.n_tokens);
        }
        hctx.il_prev = il;
        tick++;
        stats.n_calls++;
        stats.routes_total += uint64_t(routes.n_used*routes.n_tokens);
        stats.between_ms   += hctx.between_ms;
        stats.gpu_gap_ms   += hctx.gpu_gap_ms;
        hctx.between_ms     = 0.0;
        hctx.gpu_gap_ms     = 0.0;
        job.init(il, n_waves, n_expert, routes, pol.skip_threshold);
        note_prediction(hctx, il, routes);
        if (hctx.graph_depth == 0) {
            adapt_depth(hctx); // a graph without predictions has no prefetch op to do it
        }
    }
    hctx.cpu_bytes[0] = hctx.cpu_bytes[1] = 0;
    if (cpu && pol.cpu_compute && wave == 0 && n_waves == 1) {
        plan_cpu(hctx, pol, split);
    }
    stats.n_waves++;
    const llama_hobbit_clock now = clock_at(il);

    // plan, waiting in turn while other contexts (or queued prefetches) pin the room it needs
    llama_hobbit_plan_counts counts;
    hctx.decisions.clear();
    const uint64_t ticket = next_ticket++;
    queue.push_back(ticket);
    cv.wait(lk, [&]() {
        if (queue.front() != ticket) {
            return false;
        }
        for (;;) {
            if (llama_hobbit_plan_wave(slots, job, wave, pol, *evictor, now, hctx.decisions, counts)) {
                return true;
            }
            // room held by a prefetch: one not started yet is taken back at once, one being
            // read is waited for; room pinned by other contexts is waited for
            if (counts.busy < 0 || !take_back_prefetch(lk, counts.busy)) {
                return false;
            }
        }
    });
    queue.pop_front();
    cv.notify_all();

    note_evicted(counts.evicted);
    stats.demotions     += counts.demotions;
    stats.prefetch_used += counts.prefetch_used;
    n_prefetched        -= counts.prefetch_used;

    // demand reads go to the I/O threads at once; a copy being prefetched is read next
    hctx.loads.clear();
    hctx.waits.clear();
    hctx.submitted_at = std::chrono::steady_clock::now();
    std::vector<llama_hobbit_load_ptr> split_heads;
    for (const auto & d : hctx.decisions) {
        hctx.pins.push_back(d.idx);
        if (d.action == LLAMA_HOBBIT_LOAD) {
            stats.cache_bytes += store.entry_bytes(d.lvl);
            stats.cache_peak_bytes = std::max(stats.cache_peak_bytes, stats.cache_bytes);
            hctx.loads.push_back(make_load(d.idx, 0));
            const llama_hobbit_load_ptr load = hctx.loads.back();
            if (cpu && job.cpu[d.expert] == 2) {
                // a split miss: its GPU rows first, its CPU rows after the other copies
                load->split_row = split_row(il, d.lvl);
                if (submit_split_part(load)) {
                    split_heads.push_back(load);
                    hctx.cpu_bytes[d.lvl] += load->head_bytes; // the rows the CPU computes
                    stats.cpu_bytes       += load->head_bytes;
                    continue;
                }
                load->split_row = 0;
                job.cpu[d.expert] = 0; // the copier cannot take it: loaded whole, computed by the GPU
            }
            if (!submit_copy(load)) {
                loader.submit(load);
            }
        } else if (d.action == LLAMA_HOBBIT_WAIT) {
            auto it = in_flight.find(d.idx);
            if (it != in_flight.end()) {
                loader.promote(it->second);
                hctx.waits.push_back(it->second);
            }
        }
    }
    submit_prefetch_copies();
    for (const auto & load : split_heads) {
        submit_split_head(load); // needed by no layer of this pass: behind the prefetches
    }

    if (cpu) {
        // the CPU path's expert ids (the last planes, one a level), and its routes in the books;
        // the slots follow in finish_wave, once the CPU's experts are computed and the loads are in
        const int64_t cpu_plane = ids->ne[2] - n_levels();
        for (int64_t t = 0; t < routes.n_tokens; ++t) {
            for (int64_t r = 0; r < routes.n_used; ++r) {
                const int e = routes.expert(r, t);
                if (job.cpu[e] && job.level[e] >= 0) {
                    id_at(ids, int(cpu_plane + job.level[e]), r, t) = e;
                }
            }
        }
        return;
    }
    finish_wave_locked(lk, hctx, il, wave, routes, ids);
}

void llama_hobbit_cache::finish_wave_locked(std::unique_lock<std::mutex> & lk, llama_hobbit_context & hctx, int il,
                                            int wave, const llama_hobbit_routes & routes, ggml_tensor * ids) {
    llama_hobbit_job & job = hctx.job;
    const int n_waves = job.n_waves;

    // wait for this wave's reads and for copies others are reading (a prefetch on the copier's
    // stream is waited for here, by whichever wave needs it first); of a split miss, for the
    // rows the GPU computes
    llama_hobbit_split_wait parts;
    parts.done_at = hctx.submitted_at;
    wait_split_parts(lk, hctx.loads, parts);
    drain_copies(lk, hctx.loads);
    drain_copies(lk, hctx.waits);
    cv.wait(lk, [&]() {
        for (const auto & l : hctx.loads) {
            if (!l->done) {
                return false;
            }
        }
        for (const auto & d : hctx.decisions) {
            if (d.action == LLAMA_HOBBIT_WAIT && slots.entry(d.idx).state == LLAMA_HOBBIT_LOADING) {
                return false;
            }
        }
        return true;
    });
    size_t copied = parts.bytes; // and the bus's rate: what the wave waited for over the time it took
    auto last_done = parts.done_at;
    bool timed = parts.timed; // the copies' end is known (a copier's copy that ended before its wait is not)
    for (const auto & l : hctx.loads) {
        if (!l->ok) {
            hctx.fail(l->err);
        }
        copied   += l->bytes;
        last_done = std::max(last_done, l->done_at);
        timed     = timed && (!l->direct || l->timed);
    }
    if (gpu && !unified && copied > 0 && timed) {
        cost.note_copy(copied, std::chrono::duration<double, std::milli>(last_done - hctx.submitted_at).count());
    }
    for (const auto & l : hctx.waits) {
        if (!l->ok) {
            hctx.fail(l->err);
        }
    }
    hctx.loads.clear();
    hctx.waits.clear();
    for (const auto & d : hctx.decisions) {
        if (d.action == LLAMA_HOBBIT_WAIT && slots.entry(d.idx).state != LLAMA_HOBBIT_READY) {
            hctx.fail(format("hobbit: expert %d of layer %d could not be read by another context", d.expert, il));
        }
        if (d.action == LLAMA_HOBBIT_LOAD && d.upgrade && slots.entry(d.idx).state == LLAMA_HOBBIT_READY) {
            stats.upgrades++;
            const int lo = slots.index(il, d.expert, LLAMA_HOBBIT_LO);
            if (slots.entry(lo).state == LLAMA_HOBBIT_READY && slots.entry(lo).pins == 0) {
                note_evicted({ lo });
                slots.release(lo); // the lo copy is now redundant
            }
        }
    }
    if (hctx.failed) {
        return;
    }

    // the slot of each route for each path; -1 leaves the route out of that path
    const bool last = wave == n_waves - 1;
    if (last) {
        expire_prefetches(il);
    }
    uint64_t unserved = 0;
    for (int64_t t = 0; t < routes.n_tokens; ++t) {
        for (int64_t r = 0; r < routes.n_used; ++r) {
            const int e = routes.expert(r, t);
            const int lvl = job.level[e];
            int outcome = -1;
            if (lvl >= 0 && job.cpu[e] == 1) {
                (lvl == LLAMA_HOBBIT_HI ? stats.cpu_hi : stats.cpu_lo)++;
                outcome = lvl == LLAMA_HOBBIT_HI ? LLAMA_HOBBIT_CPU_HI : LLAMA_HOBBIT_CPU_LO;
            } else if (lvl >= 0 && job.wave[e] == wave) {
                // a split miss: the split plane of its level (after hi|lo), its other rows on the CPU
                const bool split = job.cpu[e] == 2;
                id_at(ids, split ? n_levels() + lvl : lvl, r, t) = slots.entry(slots.index(il, e, lvl)).slot;
                stats.cpu_split += split ? 1 : 0;
                if (job.loaded[e]) {
                    (lvl == LLAMA_HOBBIT_HI ? stats.loads_hi : stats.loads_lo)++;
                    outcome = lvl == LLAMA_HOBBIT_HI ? LLAMA_HOBBIT_LOAD_HI : LLAMA_HOBBIT_LOAD_LO;
                    job.loaded[e] = 0;
                } else {
                    (lvl == LLAMA_HOBBIT_HI ? stats.hits_hi : stats.hits_lo)++;
                    outcome = lvl == LLAMA_HOBBIT_HI ? LLAMA_HOBBIT_HIT_HI : LLAMA_HOBBIT_HIT_LO;
                }
            } else if (lvl < 0 && ((wave == 0 && job.need[e] < 0.0f) || (last && job.need[e] >= 0.0f))) {
                stats.skipped++;
                unserved += job.need[e] >= 0.0f ? 1 : 0;
                outcome = LLAMA_HOBBIT_SKIP;
            }
            if (tracing && outcome >= 0) {
                if (trace.size() < trace_capacity) {
                    trace.push_back({ pass - trace_pass, il, (int32_t) t, e, routes.share(r, t), outcome,
                                      outcome == LLAMA_HOBBIT_SKIP ? 0 : job.prefetched[e] });
                } else {
                    trace_dropped++;
                }
            }
        }
    }

    if (unserved > 0) {
        // the wave count and quotas make this impossible; say so loudly if it ever happens
        LLAMA_LOG_ERROR("%s: hobbit: %llu routes of layer %d found no room in %d waves\n", __func__,
                (unsigned long long) unserved, il, n_waves);
    }
}

void llama_hobbit_cache::note_prediction(llama_hobbit_context & hctx, int il, const llama_hobbit_routes & routes) {
    const uint8_t made = hctx.pred_made[il];
    if (!made) {
        return;
    }
    const uint8_t * pred = &hctx.predicted[size_t(il)*n_expert];
    for (int d = 0; d < LLAMA_HOBBIT_PREFETCH_MAX; ++d) {
        if (!(made & (1 << d))) {
            continue;
        }
        uint64_t total = 0, right = 0;
        for (int64_t t = 0; t < routes.n_tokens; ++t) {
            for (int64_t r = 0; r < routes.n_used; ++r) {
                total++;
                right += (pred[routes.expert(r, t)] >> d) & 1;
            }
        }
        stats.predicted[d]       += total;
        stats.predicted_right[d] += right;
        hctx.accuracy[d] = 0.8*hctx.accuracy[d] + 0.2*double(right)/double(std::max<uint64_t>(total, 1));
    }
    hctx.pred_made[il] = 0;
    std::fill(hctx.predicted.begin() + size_t(il)*n_expert, hctx.predicted.begin() + size_t(il + 1)*n_expert, 0);
}

void llama_hobbit_cache::time_pass(llama_hobbit_context & hctx, int64_t n_tokens) {
    if (!gpu || policy.prefetch_depth != LLAMA_HOBBIT_PREFETCH_AUTO) {
        return;
    }
    // a decode pass follows another: the time between their starts is one token's
    const auto now    = std::chrono::steady_clock::now();
    const bool decode = n_tokens <= CPU_PATH_MAX_TOKENS;
    if (decode && hctx.pass_decode) {
        stats.passes_at_depth[depth_trial.depth]++;
        depth_trial.on_pass(std::chrono::duration<double, std::milli>(now - hctx.pass_at).count());
    }
    hctx.pass_at     = now;
    hctx.pass_decode = decode;
}

void llama_hobbit_cache::adapt_depth(llama_hobbit_context & hctx) {
    if (policy.prefetch_depth != LLAMA_HOBBIT_PREFETCH_AUTO) {
        hctx.depth = std::clamp(policy.prefetch_depth, 0, LLAMA_HOBBIT_PREFETCH_MAX);
    } else if (gpu) {
        hctx.depth = std::min(depth_trial.depth, LLAMA_HOBBIT_PREFETCH_MAX); // measured (time_pass)
    } else {
        const double reads_per_route = double(n_expert_used + std::max(0, policy.prefetch_width))/n_expert_used;
        hctx.depth = llama_hobbit_auto_depth(hctx.accuracy, LLAMA_HOBBIT_PREFETCH_MAX, hctx.stall_ms, hctx.compute_ms,
                                             reads_per_route);
    }
    stats.prefetch_depth = hctx.depth;
}

void llama_hobbit_cache::prefetch(llama_hobbit_context & hctx, int il, int gating,
                                  const std::vector<llama_hobbit_router_logits> & logits) {
    std::lock_guard<std::mutex> lock(mtx);
    try {
        prefetch_locked(hctx, il, gating, logits);
    } catch (const std::exception & e) {
        // a prefetch is only a guess: failing one costs speed, never correctness
        LLAMA_LOG_WARN("%s: hobbit: prefetch after layer %d failed: %s\n", __func__, il, e.what());
    }
}

void llama_hobbit_cache::prefetch_locked(llama_hobbit_context & hctx, int il, int gating,
                                         const std::vector<llama_hobbit_router_logits> & logits) {
    adapt_depth(hctx);
    const llama_hobbit_policy pol = effective_policy();
    if (logits.empty() || (hctx.depth == 0 && pol.prefetch_depth == 0)) {
        return;
    }
    // predictions at every depth are recorded (to keep measuring accuracy); reads are queued
    // for those at the depth in use
    std::vector<llama_hobbit_prediction> preds;
    for (const auto & l : logits) {
        const ggml_tensor * bias = probs_bias[l.il];
        const float * bias_data = bias && bias->buffer && ggml_backend_buffer_is_host(bias->buffer)
            ? (const float *) bias->data : nullptr;
        preds.emplace_back();
        preds.back().il    = l.il;
        preds.back().depth = l.depth;
        llama_hobbit_predict(l.data, l.nb1, n_expert, l.n_tokens, n_expert_used, pol.prefetch_width, gating,
                             bias_data, preds.back());
    }
    int deepest = il;
    for (const auto & p : preds) {
        if (p.depth <= hctx.depth) {
            deepest = std::max(deepest, p.il);
        }
    }
    const prefetch_guard guard(*evictor, il, deepest);
    const llama_hobbit_clock now = clock_at(il);
    // at most one layer's worth of predicted experts per layer of depth prefetched and not used
    // yet (counted in the books, not by how far the reads got: what is prefetched must not
    // depend on the disk's timing)
    const int64_t cap = int64_t(hctx.depth)*(n_expert_used + std::max(0, pol.prefetch_width));

    for (const auto & p : preds) {
        hctx.pred_made[p.il] |= uint8_t(1 << (p.depth - 1));
        for (int e = 0; e < n_expert; ++e) {
            if (p.need[e] >= 0.0f) {
                hctx.predicted[size_t(p.il)*n_expert + e] |= uint8_t(1 << (p.depth - 1));
            }
        }
    }
    for (const auto & p : preds) {
        if (p.depth > hctx.depth) {
            continue;
        }
        std::vector<int> order;
        for (int e = 0; e < n_expert; ++e) {
            if (p.need[e] >= 0.0f) {
                order.push_back(e);
            }
        }
        std::sort(order.begin(), order.end(), [&](int a, int b) { return p.need[a] > p.need[b]; });
        for (int e : order) {
            if (p.need[e] < pol.skip_threshold && !p.widened[e]) {
                continue; // a miss the policy would skip
            }
            // (an expert only the widened set predicted is prefetched at lo, unless every hi
            // expert fits: effective_policy)
            const bool want_hi = llama_hobbit_miss_level(pol, slots.has_lo, p.widened[e] ? -1.0f : p.need[e]) == LLAMA_HOBBIT_HI;
            if (slots.cached_any(p.il, e)) {
                continue; // cached or on its way (a lo copy serves; upgrades are the route's call)
            }
            const int idx = slots.index(p.il, e, want_hi ? LLAMA_HOBBIT_HI : LLAMA_HOBBIT_LO);
            if (n_prefetched >= cap) {
                return;
            }
            std::vector<int> evicted;
            if (slots.alloc(idx, guard, now, &evicted, /*pin =*/ false) < 0) {
                continue; // no room a prefetch may take now
            }
            note_evicted(evicted);
            n_prefetched++;
            llama_hobbit_entry & en = slots.entry(idx);
            en.prefetched = (uint8_t) p.depth;
            en.last_use   = now.tick; // as fresh as what the layer being served uses
            en.last_pass  = now.pass;
            stats.cache_bytes += store.entry_bytes(slots.level_of(idx));
            stats.cache_peak_bytes = std::max(stats.cache_peak_bytes, stats.cache_bytes);
            stats.prefetch_issued++;
            llama_hobbit_load_ptr job = make_load(idx, p.depth);
            if (copier_takes(job)) {
                deferred_prefetches.push_back(job); // to the copier, behind the next wave's demand copies
            } else {
                loader.submit(job);
            }
        }
    }
}

void llama_hobbit_cache::trace_enable(bool enable, uint64_t capacity) {
    std::lock_guard<std::mutex> lock(mtx);
    tracing        = enable;
    trace_capacity = capacity;
    if (enable) {
        trace.clear();
        trace_pass    = pass + 1; // the next walk through the layers is the first traced
        trace_dropped = 0;
    }
}

size_t llama_hobbit_cache::trace_read(llama_hobbit_route_event * out, size_t max, uint64_t * dropped) {
    std::lock_guard<std::mutex> lock(mtx);
    const size_t n = std::min(max, trace.size());
    std::copy(trace.begin(), trace.begin() + n, out);
    trace.erase(trace.begin(), trace.begin() + n);
    if (dropped) {
        *dropped = trace_dropped;
    }
    return n;
}

llama_hobbit_policy llama_hobbit_cache::get_policy() {
    std::lock_guard<std::mutex> lock(mtx);
    return policy;
}

bool llama_hobbit_cache::set_policy(const llama_hobbit_policy & pol, std::string & err) {
    auto ev = llama_hobbit_make_evictor(pol.eviction, weights_of(pol));
    const bool weights_ok = pol.w_recency >= 0.0f && pol.w_frequency >= 0.0f && pol.w_hi_need >= 0.0f &&
                            pol.w_distance >= 0.0f;
    const bool depth_ok = pol.prefetch_depth == LLAMA_HOBBIT_PREFETCH_AUTO ||
                          (pol.prefetch_depth >= 0 && pol.prefetch_depth <= LLAMA_HOBBIT_PREFETCH_MAX);
    if (!(pol.skip_threshold >= 0.0f) || !(pol.hi_threshold >= pol.skip_threshold) ||
            !(pol.upgrade_threshold >= 0.0f) || !ev || !weights_ok || !depth_ok ||
            pol.prefetch_width < 0 || pol.prefetch_width > n_expert || pol.cpu_compute < 0 || pol.cpu_compute > 3) {
        err = format("hobbit: invalid policy (need 0 <= skip_threshold <= hi_threshold, upgrade_threshold >= 0, "
                     "a known eviction, weights >= 0, prefetch_depth -1..%d, 0 <= prefetch_width <= %d, cpu_compute 0..3)",
                     LLAMA_HOBBIT_PREFETCH_MAX, n_expert);
        return false;
    }
    if (pol.hi_threshold > 1.0f && (resident || (has_lo && !slots.has_lo))) {
        err = resident ? "hobbit: every hi expert is resident in VRAM, so a policy that loads at lo only "
                         "(hi_threshold > 1) cannot apply: load with hobbit.resident=0, or a budget below 100%"
                       : "hobbit: this expert cache holds every hi expert and has no lo slots, so it cannot load at "
                         "lo only (hi_threshold > 1): lower the expert budget below 100%";
        return false;
    }
    std::lock_guard<std::mutex> lock(mtx);
    policy  = pol;
    evictor = std::move(ev);
    return true;
}

llama_hobbit_stats llama_hobbit_cache::get_stats() {
    std::lock_guard<std::mutex> lock(mtx);
    llama_hobbit_stats s = stats;
    s.bytes_in_flight_peak = loader.bytes_pending_peak();
    s.tier                 = gpu ? 1 : 0;
    s.host_tier_bytes      = gpu ? host.bytes() : 0;
    s.bytes_read           = gpu && host.resident() ? 0 : s.bytes_loaded;
    s.unified              = unified ? 1 : 0;
    s.resident             = resident ? 1 : 0;
    s.copy_gbps            = gpu && !unified && cost.copy_rate > 0.0 ? cost.copy_rate/1e6 : 0.0;
    s.cpu_gbps             = cost.cpu_rate[LLAMA_HOBBIT_HI]/1e6;
    return s;
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
    stats.io_threads           = keep.io_threads;
    stats.prefetch_depth       = keep.prefetch_depth;
}
