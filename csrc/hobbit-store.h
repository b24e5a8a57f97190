// HOBBIT expert store: where every routed expert lives in the model files, and reading it.
//
// For each (layer, level, projection) the store knows the file and the byte range of expert 0
// and the stride between experts; one expert of one projection is one contiguous range, so a
// load is one read per projection. Reads never abort the process: a failed read, a short read,
// or a file that changed since it was opened returns false with a message naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

enum llama_hobbit_proj { LLAMA_HOBBIT_GATE = 0, LLAMA_HOBBIT_UP = 1, LLAMA_HOBBIT_DOWN = 2, LLAMA_HOBBIT_N_PROJ = 3 };
enum llama_hobbit_lvl  { LLAMA_HOBBIT_HI = 0, LLAMA_HOBBIT_LO = 1, LLAMA_HOBBIT_N_LVL = 2 };

// where one (layer, level, projection) tensor's data lives
struct llama_hobbit_range {
    int    file   = -1;
    size_t offs   = 0; // of expert 0
    size_t stride = 0; // bytes between experts (= bytes of one expert)
};

// an aligned staging buffer for O_DIRECT reads; each reading thread owns one
struct llama_hobbit_bounce {
    void * data = nullptr;
    size_t size = 0;

    llama_hobbit_bounce() = default;
    llama_hobbit_bounce(const llama_hobbit_bounce &) = delete;
    llama_hobbit_bounce & operator=(const llama_hobbit_bounce &) = delete;
    ~llama_hobbit_bounce();

    // make room for n bytes; false if the allocation failed
    bool reserve(size_t n);
};

class llama_hobbit_store {
public:
    static constexpr size_t DIRECT_ALIGN = 4096;
    static constexpr int    MAX_EINTR    = 64; // retries of an interrupted read before giving up

    llama_hobbit_store() = default;
    llama_hobbit_store(const llama_hobbit_store &) = delete;
    llama_hobbit_store & operator=(const llama_hobbit_store &) = delete;
    ~llama_hobbit_store();

    // open the model files (throws std::runtime_error: load time only). With direct_io, each
    // file is also opened with O_DIRECT where the system allows it.
    void open(const std::vector<std::string> & paths, bool direct_io);

    // size the range table for n_layer layers
    void resize(int n_layer);

    llama_hobbit_range & range(int il, int lvl, int proj) {
        return ranges[(size_t(il)*LLAMA_HOBBIT_N_LVL + lvl)*LLAMA_HOBBIT_N_PROJ + proj];
    }
    const llama_hobbit_range & range(int il, int lvl, int proj) const {
        return ranges[(size_t(il)*LLAMA_HOBBIT_N_LVL + lvl)*LLAMA_HOBBIT_N_PROJ + proj];
    }

    // bytes of one expert of one projection at each level (the same for every layer)
    size_t expert_bytes[LLAMA_HOBBIT_N_LVL][LLAMA_HOBBIT_N_PROJ] = {};

    size_t entry_bytes(int lvl) const {
        return expert_bytes[lvl][0] + expert_bytes[lvl][1] + expert_bytes[lvl][2];
    }

    // bytes a bounce buffer needs for any read of this store (0 without O_DIRECT, or when every
    // expert range is block-aligned and read straight into its slot)
    size_t bounce_bytes() const;

    // read projection p of expert e of layer il at level lvl into dst. On failure returns false
    // and sets err to a one-line message naming the file and the cause. With O_DIRECT, a range
    // whose offset, size and destination are all block-aligned is read straight into dst; any
    // other goes through the bounce buffer.
    bool read_part(int il, int e, int lvl, int p, char * dst, llama_hobbit_bounce & bounce, std::string & err) const;

    // read all projections of an expert, dst[p] for projection p
    bool read_expert(int il, int e, int lvl, char * const dst[LLAMA_HOBBIT_N_PROJ],
                     llama_hobbit_bounce & bounce, std::string & err) const;

    bool direct(int file) const { return files[file].fd_direct >= 0; }
    bool any_direct() const;
    const std::string & path(int file) const { return files[file].path; }

private:
    struct file_info {
        std::string path;
        int      fd        = -1;
        int      fd_direct = -1;
        // identity when opened, to notice the file being truncated or rewritten under us
        uint64_t size      = 0;
        int64_t  mtime_ns  = 0;
    };

    bool unchanged(const file_info & f, std::string & err) const;
    bool read_buffered(const file_info & f, char * dst, size_t n, size_t off, std::string & err) const;
    bool read_direct(const file_info & f, char * dst, size_t n, size_t off, llama_hobbit_bounce & bounce,
                     std::string & err) const;

    std::vector<file_info>          files;
    std::vector<llama_hobbit_range> ranges; // [il][lvl][proj]
};
