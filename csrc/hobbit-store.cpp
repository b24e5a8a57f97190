#include "hobbit-store.h"

#include "llama-impl.h"

#include "ggml.h"

#include <algorithm>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(_WIN32)
#error "HOBBIT expert store: pread-based I/O is POSIX only for now"
#else
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace {

int64_t mtime_ns(const struct stat & st) {
#if defined(__APPLE__)
    return int64_t(st.st_mtimespec.tv_sec)*1000000000 + st.st_mtimespec.tv_nsec;
#else
    return int64_t(st.st_mtim.tv_sec)*1000000000 + st.st_mtim.tv_nsec;
#endif
}

} // namespace

llama_hobbit_bounce::~llama_hobbit_bounce() {
    free(data);
}

bool llama_hobbit_bounce::reserve(size_t n) {
    if (n <= size) {
        return true;
    }
    void * p = nullptr;
    if (posix_memalign(&p, llama_hobbit_store::DIRECT_ALIGN, n) != 0) {
        return false;
    }
    free(data);
    data = p;
    size = n;
    return true;
}

llama_hobbit_store::~llama_hobbit_store() {
    for (const auto & f : files) {
        if (f.fd >= 0) {
            close(f.fd);
        }
        if (f.fd_direct >= 0) {
            close(f.fd_direct);
        }
    }
}

void llama_hobbit_store::open(const std::vector<std::string> & paths, bool direct_io) {
    for (const auto & path : paths) {
        file_info f;
        f.path = path;
        f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (f.fd < 0) {
            throw std::runtime_error(format("hobbit: cannot open %s: %s", path.c_str(), strerror(errno)));
        }
        files.push_back(f); // owns the descriptor from here on
        struct stat st;
        if (fstat(f.fd, &st) != 0) {
            throw std::runtime_error(format("hobbit: cannot stat %s: %s", path.c_str(), strerror(errno)));
        }
        files.back().size     = uint64_t(st.st_size);
        files.back().mtime_ns = mtime_ns(st);
#ifdef O_DIRECT
        if (direct_io) {
            files.back().fd_direct = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
            if (files.back().fd_direct < 0) {
                LLAMA_LOG_WARN("hobbit: O_DIRECT not available for %s (%s), using buffered reads\n",
                        path.c_str(), strerror(errno));
            }
        }
#else
        (void) direct_io;
#endif
    }
}

void llama_hobbit_store::resize(int n_layer) {
    ranges.assign(size_t(n_layer)*LLAMA_HOBBIT_N_LVL*LLAMA_HOBBIT_N_PROJ, llama_hobbit_range{});
}

bool llama_hobbit_store::any_direct() const {
    for (const auto & f : files) {
        if (f.fd_direct >= 0) {
            return true;
        }
    }
    return false;
}

size_t llama_hobbit_store::bounce_bytes() const {
    if (!any_direct()) {
        return 0;
    }
    // a file whose expert ranges are all whole blocks is read straight into the slots
    bool aligned = true;
    for (const auto & r : ranges) {
        aligned = aligned && (r.file < 0 || (r.offs % DIRECT_ALIGN == 0 && r.stride % DIRECT_ALIGN == 0));
    }
    if (aligned) {
        return 0;
    }
    size_t most = 0;
    for (int lvl = 0; lvl < LLAMA_HOBBIT_N_LVL; ++lvl) {
        for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
            most = std::max(most, expert_bytes[lvl][p]);
        }
    }
    // an unaligned range touches at most one extra block at each end
    return most == 0 ? 0 : GGML_PAD(most, DIRECT_ALIGN) + 2*DIRECT_ALIGN;
}

bool llama_hobbit_store::unchanged(const file_info & f, std::string & err) const {
    struct stat st;
    if (fstat(f.fd, &st) != 0) {
        err = format("cannot stat %s: %s", f.path.c_str(), strerror(errno));
        return false;
    }
    if (uint64_t(st.st_size) != f.size || mtime_ns(st) != f.mtime_ns) {
        err = format("%s changed after it was loaded (size %llu, was %llu); reload the model",
                f.path.c_str(), (unsigned long long) st.st_size, (unsigned long long) f.size);
        return false;
    }
    return true;
}

bool llama_hobbit_store::read_buffered(const file_info & f, char * dst, size_t n, size_t off, std::string & err) const {
    size_t done = 0;
    int interrupted = 0;
    while (done < n) {
        const ssize_t r = pread(f.fd, dst + done, n - done, (off_t) (off + done));
        if (r < 0 && errno == EINTR && ++interrupted <= MAX_EINTR) {
            continue;
        }
        if (r < 0) {
            err = format("%s: %s", f.path.c_str(), strerror(errno));
            return false;
        }
        if (r == 0) {
            err = format("%s: unexpected end of file at byte %zu", f.path.c_str(), off + done);
            return false;
        }
        done += size_t(r);
    }
    return true;
}

bool llama_hobbit_store::read_direct(const file_info & f, char * dst, size_t n, size_t off,
                                     llama_hobbit_bounce & bounce, std::string & err) const {
    // O_DIRECT wants aligned offsets, sizes and buffers: read an aligned range straight into
    // dst, any other as its aligned superset into the bounce buffer, then copy the part
    const bool aligned = off % DIRECT_ALIGN == 0 && n % DIRECT_ALIGN == 0 && uintptr_t(dst) % DIRECT_ALIGN == 0;
    const size_t first = off & ~(DIRECT_ALIGN - 1);
    const size_t need  = off + n - first;
    const size_t total = GGML_PAD(need, DIRECT_ALIGN);
    if (!aligned && !bounce.reserve(total)) {
        err = format("cannot allocate %zu bytes to read %s", total, f.path.c_str());
        return false;
    }
    char * buf = aligned ? dst : (char *) bounce.data;
    size_t done = 0;
    int interrupted = 0;
    while (done < need) {
        const ssize_t r = pread(f.fd_direct, buf + done, total - done, (off_t) (first + done));
        if (r < 0 && errno == EINTR && ++interrupted <= MAX_EINTR) {
            continue;
        }
        if (r < 0) {
            err = format("%s: %s", f.path.c_str(), strerror(errno));
            return false;
        }
        if (r == 0) {
            // the file may end inside the last aligned block; ending before `need` is a short file
            err = format("%s: unexpected end of file at byte %zu", f.path.c_str(), first + done);
            return false;
        }
        size_t next = done + size_t(r);
        if (next < need && next % DIRECT_ALIGN != 0) {
            // a short read that ends mid-block: O_DIRECT resumes only at an aligned offset
            next -= next % DIRECT_ALIGN;
            if (next <= done && ++interrupted > MAX_EINTR) {
                err = format("%s: reads keep returning less than one block", f.path.c_str());
                return false;
            }
        }
        done = next;
    }
    if (!aligned) {
        memcpy(dst, (const char *) bounce.data + (off - first), n);
    }
    return true;
}

bool llama_hobbit_store::read_part(int il, int e, int lvl, int p, char * dst, llama_hobbit_bounce & bounce,
                                   std::string & err) const {
    static const char * const proj_name[LLAMA_HOBBIT_N_PROJ] = { "gate", "up", "down" };
    const llama_hobbit_range & r = range(il, lvl, p);
    const file_info & f = files.at(r.file);
    const size_t n   = expert_bytes[lvl][p];
    const size_t off = r.offs + size_t(e)*r.stride;
    std::string why;
    const bool ok = unchanged(f, why) &&
        (f.fd_direct >= 0 ? read_direct(f, dst, n, off, bounce, why) : read_buffered(f, dst, n, off, why));
    if (!ok) {
        err = format("hobbit: cannot read expert %d of layer %d (%s, level %d): %s",
                e, il, proj_name[p], lvl, why.c_str());
    }
    return ok;
}

bool llama_hobbit_store::read_expert(int il, int e, int lvl, char * const dst[LLAMA_HOBBIT_N_PROJ],
                                     llama_hobbit_bounce & bounce, std::string & err) const {
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        if (!read_part(il, e, lvl, p, dst[p], bounce, err)) {
            return false;
        }
    }
    return true;
}
