//! Which functions `weft.wasm` exports to Envoy. Envoy (proxy-wasm-cpp-host) skips every hook a
//! module does not export, and each hook it does call is one entry into the VM per request, so
//! the build keeps exactly the hooks weft implements and removes the proxy-wasm SDK's others.

/// The exports of `weft.wasm`: the ABI marker, memory and allocation, and the proxy-wasm hooks
/// weft implements (root: start and configure; HTTP: request headers; TCP: new connection and
/// data in both directions; every context: create and delete). A feature that implements a new
/// hook of the SDK must add it here, or Envoy never calls it.
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
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
];

/// Why the exports of a module could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportsError {
    /// Not a WebAssembly binary (wrong magic number or version).
    #[error("not a WebAssembly module (bad header)")]
    Header,
    /// The module ends inside a section or a name.
    #[error("the module is truncated at byte {0}")]
    Truncated(usize),
    /// An export name that is not UTF-8.
    #[error("export name at byte {0} is not UTF-8")]
    Name(usize),
}

/// The names of the exports of a WebAssembly binary module, in the order of its export section.
///
/// # Errors
/// An [`ExportsError`] when `module` is not a well-formed module header and section list.
pub fn export_names(module: &[u8]) -> Result<Vec<String>, ExportsError> {
    const HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    const EXPORT_SECTION: u8 = 7;
    if module.get(..8) != Some(&HEADER[..]) {
        return Err(ExportsError::Header);
    }
    let mut reader = Reader {
        bytes: module,
        at: 8,
    };
    while reader.at < module.len() {
        let id = reader.byte()?;
        let size = reader.leb()?;
        let end = reader
            .at
            .checked_add(size)
            .ok_or(ExportsError::Truncated(reader.at))?;
        if end > module.len() {
            return Err(ExportsError::Truncated(module.len()));
        }
        if id != EXPORT_SECTION {
            reader.at = end;
            continue;
        }
        let count = reader.leb()?;
        let mut names = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let length = reader.leb()?;
            let start = reader.at;
            let name = reader.take(length)?;
            names.push(
                std::str::from_utf8(name)
                    .map_err(|_| ExportsError::Name(start))?
                    .to_owned(),
            );
            reader.byte()?; // kind
            reader.leb()?; // index
        }
        return Ok(names);
    }
    Ok(Vec::new())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ExportsError> {
        let byte = *self
            .bytes
            .get(self.at)
            .ok_or(ExportsError::Truncated(self.at))?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ExportsError> {
        let end = self
            .at
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(ExportsError::Truncated(self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    /// An unsigned LEB128 number of at most 32 bits, as sizes and counts are.
    fn leb(&mut self) -> Result<usize, ExportsError> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return usize::try_from(value).map_err(|_| ExportsError::Truncated(self.at));
            }
        }
        Err(ExportsError::Truncated(self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module exporting memory 0 as `memory` and function 0 as `f`.
    const TWO_EXPORTS: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
        0x03, 0x02, 0x01, 0x00, // function section
        0x05, 0x03, 0x01, 0x00, 0x01, // memory section
        0x07, 0x0e, 0x02, // export section, 2 exports
        0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // memory 0
        0x01, b'f', 0x00, 0x00, // func 0
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section
    ];

    #[test]
    fn exports_are_read_in_order() {
        assert_eq!(export_names(TWO_EXPORTS).unwrap(), ["memory", "f"]);
    }

    #[test]
    fn a_module_without_exports_has_none() {
        assert_eq!(
            export_names(&TWO_EXPORTS[..8]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        assert_eq!(export_names(b"\0asm"), Err(ExportsError::Header));
        // Cut anywhere inside the export section (bytes 23..39).
        for cut in 24..39 {
            assert!(export_names(&TWO_EXPORTS[..cut]).is_err(), "cut at {cut}");
        }
    }
}
