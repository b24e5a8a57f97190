#include "hobbit-planner.h"

#include <algorithm>

namespace {

constexpr double EMA = 0.2; // weight of a new measurement in the running averages

double blend(double avg, double sample) {
    return avg > 0.0 ? (1.0 - EMA)*avg + EMA*sample : sample;
}

} // namespace

double llama_hobbit_cost_model::cpu_bytes_per_ms(int lvl) const {
    if (cpu_rate[lvl] > 0.0) {
        return cpu_rate[lvl];
    }
    // a level not measured yet: as fast as another level that was, else the default
    for (double r : cpu_rate) {
        if (r > 0.0) {
            return r;
        }
    }
    return DEFAULT_RATE;
}

void llama_hobbit_cost_model::note_copy(size_t bytes, double ms) {
    if (bytes > 0 && ms > 0.0) {
        copy_rate = blend(copy_rate, double(bytes)/ms);
    }
}

void llama_hobbit_cost_model::note_cpu(int lvl, size_t bytes, double ms, bool probe) {
    if (bytes == 0 || ms <= 0.0 || cpu_seen[lvl]++ == 0) {
        return;
    }
    const double rate = double(bytes)/ms;
    if (!probe) {
        cpu_rate[lvl] = blend(cpu_rate[lvl], rate);
    } else if (rate > cpu_rate[lvl]) {
        cpu_rate[lvl] = rate; // a cold probe is a lower bound of the warm rate: the average is stale
    }
}

std::vector<uint8_t> llama_hobbit_plan_cpu(llama_hobbit_cost_model & model, const std::vector<llama_hobbit_miss> & misses,
                                           size_t backlog_bytes) {
    std::vector<uint8_t> place(misses.size(), LLAMA_HOBBIT_PLACE_COPY);
    const double copy_rate = model.copy_bytes_per_ms();
    double t_copy = double(backlog_bytes)/copy_rate; // ms until the bus is free
    double t_cpu  = 0.0;
    bool any = false;
    for (size_t i = 0; i < misses.size(); ++i) {
        const llama_hobbit_miss & m = misses[i];
        const double cpu_rate  = model.cpu_bytes_per_ms(m.lvl);
        const double bytes     = double(m.bytes);
        const double copy_done = t_copy + bytes/copy_rate;
        const double cpu_done  = t_cpu  + bytes/cpu_rate;
        // split: the CPU's rows and the copy of the others run at once (the rows the CPU
        // computed are copied after the layer's other copies: they hold up none of them)
        const double split_cpu  = t_cpu  + m.split*bytes/cpu_rate;
        const double split_copy = t_copy + (1.0 - m.split)*bytes/copy_rate;
        const double split_done = std::max(split_cpu, split_copy);
        if (m.split > 0.0 && split_done < copy_done && split_done < cpu_done) {
            place[i] = LLAMA_HOBBIT_PLACE_SPLIT;
            t_cpu    = split_cpu;
            t_copy   = split_copy;
            any      = true;
        } else if (cpu_done < copy_done) {
            place[i] = LLAMA_HOBBIT_PLACE_CPU;
            t_cpu    = cpu_done;
            any      = true;
        } else {
            t_copy = copy_done;
        }
    }
    if (misses.empty()) {
        return place;
    }
    model.probed = false;
    if (!any && ++model.without_cpu >= llama_hobbit_cost_model::PROBE_EVERY) {
        place.back() = LLAMA_HOBBIT_PLACE_CPU; // a probe of the CPU's rate
        model.probed = true;
        any = true;
    }
    if (any) {
        model.without_cpu = 0;
    }
    return place;
}
