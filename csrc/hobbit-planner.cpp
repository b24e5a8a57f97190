#include "hobbit-planner.h"

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

std::vector<bool> llama_hobbit_plan_cpu(llama_hobbit_cost_model & model, const std::vector<llama_hobbit_miss> & misses,
                                        size_t backlog_bytes) {
    std::vector<bool> to_cpu(misses.size(), false);
    double t_copy = double(backlog_bytes)/model.copy_bytes_per_ms(); // ms until the bus is free
    double t_cpu  = 0.0;
    for (size_t i = 0; i < misses.size(); ++i) {
        const double copy_done = t_copy + double(misses[i].bytes)/model.copy_bytes_per_ms();
        const double cpu_done  = t_cpu  + double(misses[i].bytes)/model.cpu_bytes_per_ms(misses[i].lvl);
        if (cpu_done < copy_done) {
            to_cpu[i] = true;
            t_cpu = cpu_done;
        } else {
            t_copy = copy_done;
        }
    }
    if (misses.empty()) {
        return to_cpu;
    }
    bool any = false;
    for (bool c : to_cpu) {
        any = any || c;
    }
    model.probed = false;
    if (!any && ++model.without_cpu >= llama_hobbit_cost_model::PROBE_EVERY) {
        to_cpu.back() = true; // a probe of the CPU's rate
        model.probed = true;
    }
    if (to_cpu.back() || any) {
        model.without_cpu = 0;
    }
    return to_cpu;
}
