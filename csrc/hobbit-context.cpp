#include "hobbit-context.h"

llama_hobbit_context::~llama_hobbit_context() {
    cache->release(*this);
}

llama_hobbit_op * llama_hobbit_context::op(int il, int wave, int n_waves) {
    for (const auto & o : ops) {
        if (o->il == il && o->wave == wave && o->n_waves == n_waves) {
            return o.get();
        }
    }
    ops.push_back(std::make_unique<llama_hobbit_op>(llama_hobbit_op{ this, il, wave, n_waves }));
    return ops.back().get();
}
