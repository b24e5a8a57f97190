// The median of a tool's timings (hobbit-gpu, hobbit-cpu-bench); 0 for none.
#pragma once

#include <algorithm>
#include <vector>

inline double median(std::vector<double> v) {
    if (v.empty()) {
        return 0.0;
    }
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size()/2] : 0.5*(v[v.size()/2 - 1] + v[v.size()/2]);
}
