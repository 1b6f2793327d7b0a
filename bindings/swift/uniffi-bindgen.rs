//! uniffi's generator, built from this crate so its version matches the library's.
fn main() {
    uniffi::uniffi_bindgen_main()
}
