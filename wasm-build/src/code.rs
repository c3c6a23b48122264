//! What V8 compiles when Envoy loads the module: the size of each function body. Envoy's V8
//! compiles every function with its optimising compiler (TurboFan) before the first request,
//! and the memory that takes for the largest functions stays in Envoy's heap afterwards
//! (docs/decisions.md, "Small functions for V8"), so weft keeps its functions small.

use wasmparser::{Parser, Payload};

/// The largest function body weft.wasm may hold, in bytes. The largest today is
/// regex-automata's DFA search loop (about 7 KB). The second stop of issue 16 built functions
/// of 9 to 18 KB by inlining, and the same code cost Envoy 6 MiB more resident memory than in
/// functions of at most 7 KB (docs/BENCHMARKS.md).
pub const LARGEST_FUNCTION_BUDGET: usize = 8 * 1024;

/// Why a module's code could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The bytes are not a well-formed WebAssembly module.
    #[error("malformed module: {0}")]
    Parse(wasmparser::BinaryReaderError),
}

/// The size in bytes of each function body of `module`, in the code section's order.
///
/// # Errors
/// [`CodeError::Parse`] when `module` is not a well-formed module.
pub fn function_sizes(module: &[u8]) -> Result<Vec<usize>, CodeError> {
    let mut sizes = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::CodeSectionEntry(body) = payload.map_err(CodeError::Parse)? {
            sizes.push(body.get_binary_reader().bytes_remaining());
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_function_body_is_measured() {
        let small = [0x00, 0x0b]; // no locals, end
        let larger = [0x00, 0x41, 0x07, 0x1a, 0x0b]; // i32.const 7, drop, end
        let mut module = wasm_encoder::Module::new();
        let mut types = wasm_encoder::TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut functions = wasm_encoder::FunctionSection::new();
        functions.function(0).function(0);
        module.section(&functions);
        let mut code = wasm_encoder::CodeSection::new();
        code.raw(&small).raw(&larger);
        module.section(&code);
        assert_eq!(
            function_sizes(&module.finish()).unwrap(),
            vec![small.len(), larger.len()]
        );
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        assert!(function_sizes(b"\0asm\x01\0\0\0\x0a\xff").is_err());
    }
}
