// The LSTM time loop of zoo/models/cells.py in C++ for CPU float32, built on first use by
// torch.utils.cpp_extension. It computes what the Python loops there compute (`_lstm_forward_loop`,
// `_lstm_backward_loop`): each step's element-wise work is one fused pass over the batch (ATen's SIMD
// `Vectorized<float>`) instead of a dozen tensor operations, the loop runs without Python between steps, and
// the recurrent matmul, a small GEMM of the same shape at every step, calls ATen's CPU GEMM micro-kernel
// (`cpublas::brgemm`) on row blocks of the batch in parallel, without a full matmul operator's per-call set-up.
//
//   forward:   i = sigma(a_i)   f = sigma(a_f)   g = tanh(a_g)   o = sigma(a_o)     (a = W_ih x + b + W_hh h)
//              c' = f * c + i * g                 h' = o * tanh(c')
//   backward:  dh = dh' + d_out                   dc = dc' + dh * o * (1 - tanh(c')^2)
//              da_i = dc * g * i (1 - i)          da_f = dc * c * f (1 - f)
//              da_g = dc * i * (1 - g^2)          da_o = dh * tanh(c') * o (1 - o)
//              dc_prev = dc * f                   dh_prev = da W_hh
// Only the headers this file uses (Tensor's methods and at::empty), not <ATen/ATen.h> with every operator:
// a third less to compile on first use.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <mutex>

using at::Tensor;
using Vec = at::vec::Vectorized<float>;

namespace {

// C[rows, N] (+)= A[rows, K] @ B[K, N], all row-major and contiguous: row blocks in parallel where the batch has
// enough rows for every thread, else column blocks (a small batch would leave all but one thread idle).
void gemm_block(const float* A, const float* B, float* C, int64_t rows, int64_t cols, int64_t K, int64_t N,
                bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm(rows, cols, K, K, N, N, accumulate, A, B, C, false);
#else  // BLAS is column-major: C^T = B^T A^T
  at::native::cpublas::gemm(at::native::TransposeType::NoTranspose, at::native::TransposeType::NoTranspose, cols,
                            rows, K, 1.0f, B, N, A, K, accumulate ? 1.0f : 0.0f, C, N);
#endif
}

void matmul(const float* A, const float* B, float* C, int64_t rows, int64_t K, int64_t N, bool accumulate) {
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || rows >= 16 * threads) {
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      gemm_block(A + begin * K, B, C + begin * N, end - begin, N, K, N, accumulate);
    });
    return;
  }
  const int64_t block = std::max<int64_t>(64, (N / threads + 63) / 64 * 64);
  at::parallel_for(0, N, block, [&](int64_t begin, int64_t end) {
    gemm_block(A, B + begin, C + begin, rows, end - begin, K, N, accumulate);
  });
}

inline Vec sigmoid(const Vec& x) { return Vec(1.0f) / (Vec(1.0f) + x.neg().exp_u20()); }
inline Vec tanh(const Vec& x) { return Vec(2.0f) * sigmoid(x * Vec(2.0f)) - Vec(1.0f); }

// Runs body(offset, count) over [0, n) in vector-sized pieces (the last one may be short).
template <typename F>
inline void vectorized(int64_t n, const F& body) {
  for (int64_t j = 0; j < n; j += Vec::size()) body(j, std::min<int64_t>(Vec::size(), n - j));
}

// Rows per thread: split the batch only when a step has enough elements to pay for the threads.
int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 8192 / (4 * hidden)); }

// One forward step for all rows: acts [B, 4H] holds the pre-activations (i, f, g, o blocks) and receives
// the gate activations (sigma(i), sigma(f), tanh(g), sigma(o)); writes c [B, H], tanh_c [B, H], h [B, H].
void forward_step(const float* c_prev, float* acts, float* c, float* tanh_c, float* h, int64_t batch,
                  int64_t hidden) {
  at::parallel_for(0, batch, grain(hidden), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* gate = acts + b * 4 * hidden;
      const float* a = gate;
      const int64_t row = b * hidden;
      vectorized(hidden, [&](int64_t j, int64_t n) {
        Vec i = sigmoid(Vec::loadu(a + j, n)), f = sigmoid(Vec::loadu(a + hidden + j, n));
        Vec g = tanh(Vec::loadu(a + 2 * hidden + j, n)), o = sigmoid(Vec::loadu(a + 3 * hidden + j, n));
        Vec c_new = f * Vec::loadu(c_prev + row + j, n) + i * g;
        Vec tc = tanh(c_new);
        i.store(gate + j, n);
        f.store(gate + hidden + j, n);
        g.store(gate + 2 * hidden + j, n);
        o.store(gate + 3 * hidden + j, n);
        c_new.store(c + row + j, n);
        tc.store(tanh_c + row + j, n);
        (o * tc).store(h + row + j, n);
      });
    }
  });
}

// One backward step for all rows. dh [B, H]: gradient reaching h' (d_out, if given, is added); dc [B, H]:
// gradient reaching c' from the next step, replaced by the one reaching c; writes da [B, 4H].
void backward_step(const float* dh, const float* d_out, float* dc, const float* acts, const float* c_prev,
                   const float* tanh_c, float* da, int64_t batch, int64_t hidden) {
  at::parallel_for(0, batch, grain(hidden), [&](int64_t begin, int64_t end) {
    const Vec one(1.0f);
    for (int64_t b = begin; b < end; ++b) {
      const float* gate = acts + b * 4 * hidden;
      float* d = da + b * 4 * hidden;
      const int64_t row = b * hidden;
      vectorized(hidden, [&](int64_t j, int64_t n) {
        Vec i = Vec::loadu(gate + j, n), f = Vec::loadu(gate + hidden + j, n);
        Vec g = Vec::loadu(gate + 2 * hidden + j, n), o = Vec::loadu(gate + 3 * hidden + j, n);
        Vec tc = Vec::loadu(tanh_c + row + j, n);
        Vec dh_ = Vec::loadu(dh + row + j, n);
        if (d_out) dh_ = dh_ + Vec::loadu(d_out + row + j, n);
        Vec dc_ = Vec::loadu(dc + row + j, n) + dh_ * o * (one - tc * tc);
        (dc_ * g * i * (one - i)).store(d + j, n);
        (dc_ * Vec::loadu(c_prev + row + j, n) * f * (one - f)).store(d + hidden + j, n);
        (dc_ * i * (one - g * g)).store(d + 2 * hidden + j, n);
        (dh_ * tc * o * (one - o)).store(d + 3 * hidden + j, n);
        (dc_ * f).store(dc + row + j, n);
      });
    }
  });
}

// A new float tensor of `shape` whose memory is reused from an earlier call when that memory is no longer
// referenced anywhere. The loops' buffers are megabytes each and a fresh one costs a page fault per 4 KiB
// page on first touch, which at small hidden sizes takes longer than the arithmetic.
Tensor reused(at::IntArrayRef shape, const at::TensorOptions& options) {
  static std::mutex mutex;
  static std::vector<Tensor> pool;
  const int64_t numel = c10::multiply_integers(shape);
  std::lock_guard<std::mutex> lock(mutex);
  int64_t best = -1;
  for (int64_t k = 0; k < static_cast<int64_t>(pool.size()); ++k) {
    const bool free = pool[k].storage().use_count() == 1;  // only the pool holds it
    if (free && pool[k].numel() >= numel && (best < 0 || pool[k].numel() < pool[best].numel())) best = k;
  }
  if (best < 0) {  // nothing fits: drop the free buffers that are too small, add one of this size
    std::vector<Tensor> kept;
    for (auto& t : pool)
      if (t.storage().use_count() > 1) kept.push_back(t);
    pool = std::move(kept);
    pool.push_back(at::empty({numel}, options));
    best = static_cast<int64_t>(pool.size()) - 1;
  }
  return pool[best].narrow(0, 0, numel).view(shape);
}

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous CPU float32 tensor");
}

// Forward over all steps. xp [T, B, 4H]: input projections plus both biases; w_t: W_hh transposed, [H, 4H].
// Returns the gate activations [T, B, 4H], cell states [T+1, B, H] (c0 first), tanh of the cell states
// [T, B, H] and hidden states [T+1, B, H] (h0 first).
std::vector<Tensor> lstm_forward(const Tensor& xp, const Tensor& h0, const Tensor& c0, const Tensor& w_t) {
  check(xp, "xp");
  check(w_t, "w_t");
  const int64_t steps = xp.size(0), batch = xp.size(1), hidden = h0.size(1);
  auto acts = reused({steps, batch, 4 * hidden}, xp.options());
  auto cells = reused({steps + 1, batch, hidden}, xp.options());
  auto tanh_cells = reused({steps, batch, hidden}, xp.options());
  auto hs = reused({steps + 1, batch, hidden}, xp.options());
  hs[0].copy_(h0);
  cells[0].copy_(c0);
  acts.copy_(xp);
  float *a = acts.data_ptr<float>(), *c = cells.data_ptr<float>(), *tc = tanh_cells.data_ptr<float>();
  float* h = hs.data_ptr<float>();
  const float* w = w_t.data_ptr<float>();
  const int64_t gates = batch * 4 * hidden, states = batch * hidden;
  for (int64_t t = 0; t < steps; ++t) {
    matmul(h + t * states, w, a + t * gates, batch, hidden, 4 * hidden, true);  // += h W_hh^T
    forward_step(c + t * states, a + t * gates, c + (t + 1) * states, tc + t * states, h + (t + 1) * states, batch,
                 hidden);
  }
  return {acts, cells, tanh_cells, hs};
}

// Reverse loop from the forward's saved acts, c_prev (the cell states entering each step) and tanh_cells;
// d_out [T, B, H] or none; dh, dc: gradients reaching the last step's h and c; w: W_hh, [4H, H].
// Returns the pre-activation gradients [T, B, 4H] and the gradients reaching h0 and c0.
std::vector<Tensor> lstm_backward(const Tensor& acts, const Tensor& c_prev, const Tensor& tanh_cells,
                                  const std::optional<Tensor>& d_out, const Tensor& dh_last, const Tensor& dc_last,
                                  const Tensor& w) {
  check(acts, "acts");
  check(c_prev, "c_prev");
  check(tanh_cells, "tanh_cells");
  check(w, "w");
  if (d_out) check(*d_out, "d_out");
  const int64_t steps = acts.size(0), batch = acts.size(1), hidden = acts.size(2) / 4;
  auto da = reused({steps, batch, 4 * hidden}, acts.options());
  auto dc = dc_last.contiguous().clone();
  auto dh = dh_last.contiguous().clone();
  const int64_t gates = batch * 4 * hidden, states = batch * hidden;
  for (int64_t t = steps - 1; t >= 0; --t) {
    backward_step(dh.data_ptr<float>(), d_out ? d_out->data_ptr<float>() + t * states : nullptr,
                  dc.data_ptr<float>(), acts.data_ptr<float>() + t * gates, c_prev.data_ptr<float>() + t * states,
                  tanh_cells.data_ptr<float>() + t * states, da.data_ptr<float>() + t * gates, batch, hidden);
    matmul(da.data_ptr<float>() + t * gates, w.data_ptr<float>(), dh.data_ptr<float>(), batch, 4 * hidden, hidden,
           false);  // dh = da W_hh
  }
  return {da, dh, dc};
}

}  // namespace

TORCH_LIBRARY(zoo_cells, m) {
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
}
