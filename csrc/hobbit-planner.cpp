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

void llama_hobbit_cost_model::note_cpu(int lvl, size_t bytes, double ms) {
    if (bytes > 0 && ms > 0.0 && cpu_seen[lvl]++ > 0) {
        cpu_rate[lvl] = blend(cpu_rate[lvl], double(bytes)/ms);
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
    if (!any && ++model.without_cpu >= llama_hobbit_cost_model::PROBE_EVERY) {
        to_cpu.back() = true; // a probe of the CPU's rate
    }
    if (to_cpu.back() || any) {
        model.without_cpu = 0;
    }
    return to_cpu;
}

llama_hobbit_split llama_hobbit_plan_split(const llama_hobbit_cost_model & model,
                                           const std::vector<llama_hobbit_miss> & misses,
                                           const std::vector<bool> & to_cpu, size_t backlog_bytes, double min_gain) {
    const double r_copy = model.copy_bytes_per_ms();
    double t_copy = double(backlog_bytes)/r_copy;
    double t_cpu  = 0.0;
    int last_copy = -1, last_cpu = -1;
    for (size_t i = 0; i < misses.size(); ++i) {
        if (to_cpu[i]) {
            t_cpu += double(misses[i].bytes)/model.cpu_bytes_per_ms(misses[i].lvl);
            last_cpu = int(i);
        } else {
            t_copy += double(misses[i].bytes)/r_copy;
            last_copy = int(i);
        }
    }
    const double t_layer = std::max(t_copy, t_cpu);
    const int    i       = t_copy >= t_cpu ? last_copy : last_cpu;
    llama_hobbit_split out;
    if (i < 0 || misses[i].ug_bytes == 0 || t_layer <= 0.0) {
        return out;
    }
    const llama_hobbit_miss & m = misses[i];
    const double r_cpu = model.cpu_bytes_per_ms(m.lvl);
    // the two sides without this miss, then with it split at f:
    //   bus: t_copy0 + (bytes - f*ug_bytes)/r_copy      CPU: t_cpu0 + f*bytes/r_cpu
    const double t_copy0 = t_copy - (to_cpu[i] ? 0.0 : double(m.bytes)/r_copy);
    const double t_cpu0  = t_cpu  - (to_cpu[i] ? double(m.bytes)/r_cpu : 0.0);
    const double f = (t_copy0 + double(m.bytes)/r_copy - t_cpu0)/(double(m.ug_bytes)/r_copy + double(m.bytes)/r_cpu);
    if (!(f > 0.0 && f < 1.0)) {
        return out;
    }
    const double t_split = std::max(t_copy0 + (double(m.bytes) - f*double(m.ug_bytes))/r_copy, t_cpu0 + f*double(m.bytes)/r_cpu);
    if (t_split < (1.0 - min_gain)*t_layer) {
        out.miss = i;
        out.frac = f;
    }
    return out;
}
