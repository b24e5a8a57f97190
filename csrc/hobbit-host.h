// HOBBIT host tier (GPU tier only): where a copy into a VRAM slot comes from.
//
// With the experts computed on the GPU, the slot pools are in VRAM and a load is a copy from
// host memory. The host tier keeps every routed expert of the levels in use in pinned host
// memory (read from the file once, at load), so a copy runs at the bus's speed; or, when it is
// off, each load reads the expert from the file into a pinned staging buffer of the I/O thread
// and copies it from there. Copies run on the I/O thread's own CUDA stream (the backend's
// per-thread stream), so they overlap with the compute stream; a copy is complete before its
// slot is marked ready, and a slot is only overwritten when no graph pins it.
//
// The host tier also serves the planner's CPU computations (hobbit-planner.h): it exposes each
// layer's experts as ggml tensors in pinned memory, which the CPU's mul_mat_id reads directly.
//
// On unified memory (an integrated GPU) there is nothing to copy: the slot pools themselves are
// pinned host memory, presented to the GPU's backend as a buffer of its own type
// (llama_hobbit_wrap_for_device), and loads read the file straight into them.
#pragma once

#include "hobbit-store.h"

#include "ggml-backend.h"

#include <cstddef>
#include <string>
#include <vector>

// a pinned host buffer an I/O thread reads into before copying to VRAM
struct llama_hobbit_staging {
    ggml_backend_buffer_t buf  = nullptr;
    char *                data = nullptr;
    size_t                size = 0;

    llama_hobbit_staging() = default;
    llama_hobbit_staging(const llama_hobbit_staging &) = delete;
    llama_hobbit_staging & operator=(const llama_hobbit_staging &) = delete;
    ~llama_hobbit_staging();

    // make room for n bytes of buffer type buft; false if the allocation failed
    bool reserve(ggml_backend_buffer_type_t buft, size_t n);
};

// a buffer of type dev_buft over the memory of `host` (pinned host memory the device can address
// directly, as on unified memory); it owns `host` and frees it with itself. nullptr on failure.
ggml_backend_buffer_t llama_hobbit_wrap_for_device(ggml_backend_buffer_t host, ggml_backend_buffer_type_t dev_buft);

class llama_hobbit_host {
public:
    llama_hobbit_host() = default;
    llama_hobbit_host(const llama_hobbit_host &) = delete;
    llama_hobbit_host & operator=(const llama_hobbit_host &) = delete;
    ~llama_hobbit_host();

    // read every expert of the layers that `serves` marks, at levels 0..n_lvl-1, into one buffer
    // of type buft (pinned host memory). Throws std::runtime_error (load time only).
    void load(const llama_hobbit_store & store, const std::vector<bool> & serves, int n_expert, int n_lvl,
              ggml_backend_buffer_type_t buft);

    bool   resident() const { return buf != nullptr; }
    size_t bytes() const { return total; }

    // projection p of expert e of layer il at level lvl; nullptr when not resident
    const char * part(const llama_hobbit_store & store, int il, int e, int lvl, int p) const;

    // make the tensors of tensor(): for each layer held, level and projection, every expert as
    // one tensor [ne0, ne1, n_expert] shaped like proto[lvl][p] (the pool tensors). Load time
    // only; throws std::runtime_error
    void make_tensors(const llama_hobbit_store & store, ggml_tensor * const proto[][LLAMA_HOBBIT_N_PROJ], int n_expert);

    // layer il's projection p at level lvl in the host tier; nullptr when not held
    ggml_tensor * tensor(int il, int lvl, int p) const;

private:
    ggml_context *        tctx  = nullptr; // holds the tensors of tensor()
    std::vector<ggml_tensor *> tensors; // [key(il, lvl, proj)]
    ggml_backend_buffer_t buf   = nullptr;
    char *                base  = nullptr;
    size_t                total = 0;
    std::vector<size_t>   offs; // [key(il, lvl, proj)] offset of expert 0; SIZE_MAX where not held

    static size_t key(int il, int lvl, int p) { return (size_t(il)*LLAMA_HOBBIT_N_LVL + lvl)*LLAMA_HOBBIT_N_PROJ + p; }
};
