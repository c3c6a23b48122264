//! Which functions `weft.wasm` exports to Envoy.
//!
//! Envoy (proxy-wasm-cpp-host) calls a hook only if the module exports it, and every call is an
//! entry into the VM that costs about 1,500 instructions per request even when the hook does
//! nothing (counted under callgrind; docs/BENCHMARKS.md). The proxy-wasm SDK exports every hook
//! of the ABI, so the build keeps exactly the ones weft implements: a body hook, for one, would
//! otherwise run once per body chunk of every request and response.

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// The exports `weft.wasm` keeps: the WASI reactor's initialiser, memory and its allocator, the
/// ABI marker, and the proxy-wasm hooks weft implements (root: start and configure; every
/// context: create and delete; HTTP: request headers, and log at the end of the stream for
/// metrics; TCP: new connection and data in both directions). A feature that implements another hook of the SDK must add it here, or Envoy
/// never calls it; the end-to-end tests of each feature would then fail.
pub const ENVOY_ENTRY_POINTS: &[&str] = &[
    "_initialize",
    "memory",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_delete",
    "proxy_on_request_headers",
    "proxy_on_log",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
];

/// Why a module's exports could not be read or rewritten.
#[derive(Debug, thiserror::Error)]
pub enum ExportsError {
    /// The bytes are not a well-formed WebAssembly module.
    #[error("not a well-formed WebAssembly module: {0}")]
    Parse(wasmparser::BinaryReaderError),
    /// The parser placed a section outside the module's bytes.
    #[error("section {0} lies outside the module")]
    Section(u8),
    /// An entry point to keep is not exported by the compiled module (renamed in the SDK?).
    #[error("the compiled module does not export `{0}`, which weft's filter needs")]
    Missing(String),
}

/// The names of the exports of a WebAssembly module, in the order of its export section.
///
/// # Errors
/// [`ExportsError::Parse`] when `module` is not a well-formed module.
pub fn export_names(module: &[u8]) -> Result<Vec<String>, ExportsError> {
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::ExportSection(reader) = payload.map_err(ExportsError::Parse)? {
            return reader
                .into_iter()
                .map(|export| {
                    export
                        .map(|export| export.name.to_owned())
                        .map_err(ExportsError::Parse)
                })
                .collect();
        }
    }
    Ok(Vec::new())
}

/// `module` with only the exports named in `keep`; every other section is copied as it is. The
/// functions no longer exported stay in the module until an optimiser (`wasm-opt`) removes
/// what nothing references.
///
/// # Errors
/// [`ExportsError::Parse`] for a malformed module, [`ExportsError::Missing`] when a name in
/// `keep` is not exported by `module`.
pub fn keep_exports(module: &[u8], keep: &[&str]) -> Result<Vec<u8>, ExportsError> {
    let exported = export_names(module)?;
    if let Some(missing) = keep
        .iter()
        .find(|name| !exported.iter().any(|e| e == *name))
    {
        return Err(ExportsError::Missing((*missing).to_owned()));
    }
    let mut out = Module::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(ExportsError::Parse)?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export.map_err(ExportsError::Parse)?;
                if keep.contains(&export.name) {
                    exports.export(export.name, export_kind(export.kind), export.index);
                }
            }
            out.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            let data = usize::try_from(range.start)
                .ok()
                .zip(usize::try_from(range.end).ok())
                .and_then(|(start, end)| module.get(start..end))
                .ok_or(ExportsError::Section(id))?;
            out.section(&RawSection { id, data });
        }
    }
    Ok(out.finish())
}

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module exporting memory 0 as `memory` and function 0 as `f` and as `g`.
    fn module() -> Vec<u8> {
        use wasm_encoder::{
            CodeSection, Function, FunctionSection, Instruction, MemorySection, MemoryType,
            TypeSection,
        };
        let mut module = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        exports.export("f", ExportKind::Func, 0);
        exports.export("g", ExportKind::Func, 0);
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut body = Function::new([]);
        body.instruction(&Instruction::End);
        code.function(&body);
        module.section(&code);
        module.finish()
    }

    #[test]
    fn only_the_named_exports_are_kept_and_the_module_stays_valid() {
        let pruned = keep_exports(&module(), &["memory", "g"]).unwrap();
        assert_eq!(export_names(&pruned).unwrap(), ["memory", "g"]);
        wasmparser::Validator::new().validate_all(&pruned).unwrap();
    }

    #[test]
    fn an_entry_point_the_module_lacks_is_an_error() {
        let error = keep_exports(&module(), &["memory", "proxy_on_tick"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the compiled module does not export `proxy_on_tick`, which weft's filter needs"
        );
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        let whole = module();
        assert!(export_names(&whole[..4]).is_err());
        for cut in [0, 4, 8, whole.len() / 2, whole.len() - 1] {
            // Cut short, a module either fails to parse or lacks the export to keep.
            assert!(
                keep_exports(&whole[..cut], &["memory"]).is_err(),
                "cut at {cut}"
            );
        }
    }
}
