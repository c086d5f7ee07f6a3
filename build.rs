// Build script. The CUDA backend (kernels/*.cu compiled to PTX/cubin with nvcc, or embedded for
// NVRTC) hooks in here; for now it only declares what it watches so that cargo does not rerun it
// on every source change.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
