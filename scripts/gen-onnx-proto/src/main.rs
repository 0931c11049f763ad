//! Compiles `onnx.proto` with protox and writes prost types to the folder given as argument.
fn main() {
    let out = std::env::args().nth(1).expect("usage: gen-onnx-proto OUT_DIR");
    std::fs::create_dir_all(&out).expect("create the output folder");
    let fds = protox::compile(["onnx.proto"], ["."]).expect("compile onnx.proto");
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(fds)
        .expect("generate Rust");
}
