//! Deterministic guest cost: the wasm operators a module executes, counted the way wasmtime
//! counts fuel (`Config::consume_fuel`: one unit per operator, none for `nop`, `drop`, `block`,
//! `loop`, `unreachable`, `return`, `else` and `end`).
//!
//! `proxy-wasm-host` refills a guest's fuel before every call and does not report what was
//! left, so the count is made by the module itself: [`instrument`] rewrites it to add each basic
//! block's cost to a counter global as the block starts, and to report and reset the counter
//! when a `proxy_on_*` callback returns, as a `proxy_log` line at Critical level:
//! `fuel:<16 hex digits>` ([`fuel_in_logs`] reads them back). The filter code is unchanged, so
//! the count is the module's own work, independent of the machine and of its load.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection, GlobalSection,
    GlobalType, Instruction, MemArg, Module, RawSection, TypeSection, ValType,
};
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef};

/// The prefix of a fuel line in the plugin's logs.
pub const FUEL_LINE: &str = "fuel:";

/// Why a module could not be instrumented.
#[derive(Debug)]
pub struct InstrumentError(pub String);

impl std::fmt::Display for InstrumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InstrumentError {}

fn error(message: impl std::fmt::Display) -> InstrumentError {
    InstrumentError(message.to_string())
}

/// wasmtime's fuel cost of one operator.
fn fuel(op: &Operator<'_>) -> u64 {
    match op {
        Operator::Nop
        | Operator::Drop
        | Operator::Block { .. }
        | Operator::Loop { .. }
        | Operator::Unreachable
        | Operator::Return
        | Operator::Else
        | Operator::End => 0,
        _ => 1,
    }
}

/// Whether the operator after `op` starts a new basic block (control may arrive or leave here).
fn ends_block(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Unreachable
    )
}

/// The facts of the module the rewrite needs.
#[derive(Default)]
struct Layout {
    types: u32,
    imported_functions: u32,
    imported_globals: u32,
    globals: u32,
    /// Type index of each defined function.
    function_types: Vec<u32>,
    proxy_log: Option<u32>,
    /// `(export name, function index)` of the callbacks to report after.
    callbacks: Vec<(String, u32)>,
}

fn layout(wasm: &[u8]) -> Result<Layout, InstrumentError> {
    let mut layout = Layout::default();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(error)? {
            Payload::TypeSection(reader) => layout.types = reader.count(),
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(error)?;
                    match import.ty {
                        TypeRef::Func(_) => {
                            if import.module == "env" && import.name == "proxy_log" {
                                layout.proxy_log = Some(layout.imported_functions);
                            }
                            layout.imported_functions += 1;
                        }
                        TypeRef::Global(_) => layout.imported_globals += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    layout.function_types.push(ty.map_err(error)?);
                }
            }
            Payload::GlobalSection(reader) => layout.globals = reader.count(),
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(error)?;
                    // The allocator runs inside other callbacks (the host calls it from a host
                    // function), so its cost is reported with theirs.
                    if export.kind == ExternalKind::Func
                        && export.name.starts_with("proxy_on_")
                        && export.name != "proxy_on_memory_allocate"
                    {
                        layout
                            .callbacks
                            .push((export.name.to_owned(), export.index));
                    }
                }
            }
            _ => {}
        }
    }
    if layout.imported_globals != 0 || layout.globals == 0 {
        // LLVM's shadow stack pointer is then global 0, which the report writes below.
        return Err(error(
            "expected a Rust module: no imported globals, a global section",
        ));
    }
    Ok(layout)
}

/// The module with its fuel counted per callback (see the module docs).
pub fn instrument(wasm: &[u8]) -> Result<Vec<u8>, InstrumentError> {
    rewrite(wasm, false)
}

/// The prefix of a per-function line of [`instrument_profile`]: `pf:<function index as 8 hex
/// digits>:<fuel as 16 hex digits>`.
pub const PROFILE_LINE: &str = "pf:";

/// The module with its fuel counted per function: when a callback returns, one
/// [`PROFILE_LINE`] per function that ran logs its fuel since the last report (read back with
/// [`profile_in_logs`]). Where a flow's fuel goes, for finding what to make cheaper.
pub fn instrument_profile(wasm: &[u8]) -> Result<Vec<u8>, InstrumentError> {
    rewrite(wasm, true)
}

fn rewrite(wasm: &[u8], per_function: bool) -> Result<Vec<u8>, InstrumentError> {
    let layout = layout(wasm)?;
    let proxy_log = layout
        .proxy_log
        .ok_or_else(|| error("the module does not import proxy_log"))?;
    let counter = layout.globals;
    let report_type = layout.types;
    let defined = u32::try_from(layout.function_types.len()).map_err(error)?;
    let report = layout.imported_functions + defined;
    let wrapper = |k: usize| report + 1 + u32::try_from(k).unwrap_or(u32::MAX);

    let mut module = Module::new();
    let mut code = CodeSection::new();
    let mut bodies_left = 0u32;
    let mut reencoder = RoundtripReencoder;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(error)?;
        match &payload {
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                reencoder
                    .parse_type_section(&mut types, reader.clone())
                    .map_err(error)?;
                types.ty().function([], []);
                types.ty().function([ValType::I32, ValType::I64], []);
                module.section(&types);
            }
            Payload::FunctionSection(_) => {
                let mut functions = FunctionSection::new();
                for ty in &layout.function_types {
                    functions.function(*ty);
                }
                functions.function(report_type);
                for (_, index) in &layout.callbacks {
                    functions.function(function_type(&layout, *index)?);
                }
                if per_function {
                    functions.function(report_type + 1);
                }
                module.section(&functions);
            }
            Payload::GlobalSection(reader) => {
                let mut globals = GlobalSection::new();
                reencoder
                    .parse_global_section(&mut globals, reader.clone())
                    .map_err(error)?;
                let counters = if per_function { 1 + defined } else { 1 };
                for _ in 0..counters {
                    globals.global(
                        GlobalType {
                            val_type: ValType::I64,
                            mutable: true,
                            shared: false,
                        },
                        &ConstExpr::i64_const(0),
                    );
                }
                module.section(&globals);
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader.clone() {
                    let export = export.map_err(error)?;
                    let kind = reencoder.export_kind(export.kind).map_err(error)?;
                    let index = match layout
                        .callbacks
                        .iter()
                        .position(|(name, _)| name == export.name)
                    {
                        Some(k) if kind == ExportKind::Func => wrapper(k),
                        _ => export.index,
                    };
                    exports.export(export.name, kind, index);
                }
                module.section(&exports);
            }
            Payload::CodeSectionStart { count, .. } => bodies_left = *count,
            Payload::CodeSectionEntry(body) => {
                let own = if per_function {
                    counter + 1 + (defined - bodies_left)
                } else {
                    counter
                };
                code.function(&count_fuel(body, own, &mut reencoder)?);
                bodies_left -= 1;
                if bodies_left == 0 {
                    let log_pair = wrapper(layout.callbacks.len());
                    if per_function {
                        code.function(&profile_report_function(
                            counter + 1,
                            defined,
                            layout.imported_functions,
                            log_pair,
                        ));
                    } else {
                        code.function(&report_function(counter, proxy_log));
                    }
                    for (_, index) in &layout.callbacks {
                        let params = function_params(wasm, &layout, *index)?;
                        code.function(&wrapper_function(*index, params, report));
                    }
                    if per_function {
                        code.function(&log_pair_function(proxy_log));
                    }
                    module.section(&code);
                }
            }
            Payload::CustomSection(_) => {}
            other => {
                if let Some((id, range)) = other.as_section() {
                    let start = usize::try_from(range.start).map_err(error)?;
                    let end = usize::try_from(range.end).map_err(error)?;
                    module.section(&RawSection {
                        id,
                        data: &wasm[start..end],
                    });
                }
            }
        }
    }
    Ok(module.finish())
}

fn function_type(layout: &Layout, index: u32) -> Result<u32, InstrumentError> {
    let defined = index
        .checked_sub(layout.imported_functions)
        .ok_or_else(|| error("an exported callback is an import"))?;
    layout
        .function_types
        .get(defined as usize)
        .copied()
        .ok_or_else(|| error("an export names no function"))
}

/// How many parameters the callback `index` takes.
fn function_params(wasm: &[u8], layout: &Layout, index: u32) -> Result<u32, InstrumentError> {
    let ty = function_type(layout, index)?;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::TypeSection(reader) = payload.map_err(error)? {
            let func = reader
                .into_iter_err_on_gc_types()
                .nth(ty as usize)
                .ok_or_else(|| error("a function type is missing"))?
                .map_err(error)?;
            return u32::try_from(func.params().len()).map_err(error);
        }
    }
    Err(error("no type section"))
}

/// `body` with `counter += <the block's fuel>` at the start of each basic block.
fn count_fuel(
    body: &wasmparser::FunctionBody<'_>,
    counter: u32,
    reencoder: &mut RoundtripReencoder,
) -> Result<Function, InstrumentError> {
    let mut locals = Vec::new();
    for local in body.get_locals_reader().map_err(error)? {
        let (count, ty) = local.map_err(error)?;
        locals.push((count, reencoder.val_type(ty).map_err(error)?));
    }
    let mut function = Function::new(locals);
    let mut ops = Vec::new();
    let mut reader = body.get_operators_reader().map_err(error)?;
    while !reader.eof() {
        ops.push(reader.read().map_err(error)?);
    }
    let mut start_of_block = true;
    for (index, op) in ops.iter().enumerate() {
        if start_of_block {
            let cost: u64 = ops[index..]
                .iter()
                .scan(false, |ended, op| {
                    if *ended {
                        return None;
                    }
                    *ended = ends_block(op);
                    Some(fuel(op))
                })
                .sum();
            if cost > 0 {
                function.instruction(&Instruction::GlobalGet(counter));
                function.instruction(&Instruction::I64Const(i64::try_from(cost).map_err(error)?));
                function.instruction(&Instruction::I64Add);
                function.instruction(&Instruction::GlobalSet(counter));
            }
        }
        function.instruction(&reencoder.instruction(op.clone()).map_err(error)?);
        start_of_block = ends_block(op);
    }
    Ok(function)
}

/// Writes `fuel:<counter as 16 hex digits>` below the shadow stack (free between callbacks),
/// logs it at Critical and resets the counter.
fn report_function(counter: u32, proxy_log: u32) -> Function {
    const LINE: i32 = 64;
    let (line, value, digit) = (0, 1, 2);
    let mut f = Function::new([(1, ValType::I32), (1, ValType::I64), (1, ValType::I32)]);
    let byte = |offset: u64| {
        Instruction::I32Store8(MemArg {
            offset,
            align: 0,
            memory_index: 0,
        })
    };
    f.instruction(&Instruction::GlobalGet(0));
    f.instruction(&Instruction::I32Const(LINE));
    f.instruction(&Instruction::I32Sub);
    f.instruction(&Instruction::LocalSet(line));
    f.instruction(&Instruction::GlobalGet(counter));
    f.instruction(&Instruction::LocalSet(value));
    f.instruction(&Instruction::I64Const(0));
    f.instruction(&Instruction::GlobalSet(counter));
    for (offset, ch) in (0u64..).zip(FUEL_LINE.bytes()) {
        f.instruction(&Instruction::LocalGet(line));
        f.instruction(&Instruction::I32Const(i32::from(ch)));
        f.instruction(&byte(offset));
    }
    let prefix = FUEL_LINE.len() as u64;
    for nibble in 0..16u64 {
        f.instruction(&Instruction::LocalGet(line));
        f.instruction(&Instruction::LocalGet(value));
        f.instruction(&Instruction::I64Const(
            i64::try_from(60 - 4 * nibble).unwrap_or(0),
        ));
        f.instruction(&Instruction::I64ShrU);
        f.instruction(&Instruction::I64Const(15));
        f.instruction(&Instruction::I64And);
        f.instruction(&Instruction::I32WrapI64);
        f.instruction(&Instruction::LocalTee(digit));
        // '0' + d, plus 39 more ('a' - '0' - 10) for d > 9
        f.instruction(&Instruction::I32Const(48));
        f.instruction(&Instruction::I32Add);
        f.instruction(&Instruction::LocalGet(digit));
        f.instruction(&Instruction::I32Const(9));
        f.instruction(&Instruction::I32GtU);
        f.instruction(&Instruction::I32Const(39));
        f.instruction(&Instruction::I32Mul);
        f.instruction(&Instruction::I32Add);
        f.instruction(&byte(prefix + nibble));
    }
    f.instruction(&Instruction::I32Const(5)); // LogLevel::Critical
    f.instruction(&Instruction::LocalGet(line));
    f.instruction(&Instruction::I32Const(
        i32::try_from(prefix + 16).unwrap_or(0),
    ));
    f.instruction(&Instruction::Call(proxy_log));
    f.instruction(&Instruction::Drop);
    f.instruction(&Instruction::End);
    f
}

/// For each function that ran since the last report, `log_pair(function index, its fuel)`;
/// the counters are reset.
fn profile_report_function(first: u32, defined: u32, imported: u32, log_pair: u32) -> Function {
    let mut f = Function::new([]);
    for i in 0..defined {
        f.instruction(&Instruction::GlobalGet(first + i));
        f.instruction(&Instruction::I64Eqz);
        f.instruction(&Instruction::If(wasm_encoder::BlockType::Empty));
        f.instruction(&Instruction::Else);
        f.instruction(&Instruction::I32Const(
            i32::try_from(imported + i).unwrap_or(i32::MAX),
        ));
        f.instruction(&Instruction::GlobalGet(first + i));
        f.instruction(&Instruction::Call(log_pair));
        f.instruction(&Instruction::I64Const(0));
        f.instruction(&Instruction::GlobalSet(first + i));
        f.instruction(&Instruction::End);
    }
    f.instruction(&Instruction::End);
    f
}

/// `log_pair(index: i32, fuel: i64)`: logs `pf:<index>:<fuel>` in hex at Critical, written
/// below the shadow stack as [`report_function`] does.
fn log_pair_function(proxy_log: u32) -> Function {
    const LINE: i32 = 64;
    let (index, value, line, digit) = (0, 1, 2, 3);
    let mut f = Function::new([(2, ValType::I32)]);
    let byte = |offset: u64| {
        Instruction::I32Store8(MemArg {
            offset,
            align: 0,
            memory_index: 0,
        })
    };
    f.instruction(&Instruction::GlobalGet(0));
    f.instruction(&Instruction::I32Const(LINE));
    f.instruction(&Instruction::I32Sub);
    f.instruction(&Instruction::LocalSet(line));
    let mut offset = 0u64;
    let text = |f: &mut Function, offset: &mut u64, s: &str| {
        for ch in s.bytes() {
            f.instruction(&Instruction::LocalGet(line));
            f.instruction(&Instruction::I32Const(i32::from(ch)));
            f.instruction(&byte(*offset));
            *offset += 1;
        }
    };
    text(&mut f, &mut offset, PROFILE_LINE);
    // The index as 8 nibbles of an i64, then the value as 16.
    for (source, nibbles) in [(index, 8u64), (value, 16)] {
        for nibble in 0..nibbles {
            f.instruction(&Instruction::LocalGet(line));
            f.instruction(&Instruction::LocalGet(source));
            if source == index {
                f.instruction(&Instruction::I64ExtendI32U);
            }
            f.instruction(&Instruction::I64Const(
                i64::try_from(4 * (nibbles - 1 - nibble)).unwrap_or(0),
            ));
            f.instruction(&Instruction::I64ShrU);
            f.instruction(&Instruction::I64Const(15));
            f.instruction(&Instruction::I64And);
            f.instruction(&Instruction::I32WrapI64);
            f.instruction(&Instruction::LocalTee(digit));
            f.instruction(&Instruction::I32Const(48));
            f.instruction(&Instruction::I32Add);
            f.instruction(&Instruction::LocalGet(digit));
            f.instruction(&Instruction::I32Const(9));
            f.instruction(&Instruction::I32GtU);
            f.instruction(&Instruction::I32Const(39));
            f.instruction(&Instruction::I32Mul);
            f.instruction(&Instruction::I32Add);
            f.instruction(&byte(offset));
            offset += 1;
        }
        if source == index {
            text(&mut f, &mut offset, ":");
        }
    }
    f.instruction(&Instruction::I32Const(5)); // LogLevel::Critical
    f.instruction(&Instruction::LocalGet(line));
    f.instruction(&Instruction::I32Const(i32::try_from(offset).unwrap_or(0)));
    f.instruction(&Instruction::Call(proxy_log));
    f.instruction(&Instruction::Drop);
    f.instruction(&Instruction::End);
    f
}

/// Fuel per function index in the [`PROFILE_LINE`]s of `lines`, summed.
pub fn profile_in_logs(lines: &[String]) -> std::collections::BTreeMap<u32, u64> {
    let mut profile = std::collections::BTreeMap::new();
    for line in lines {
        let Some((index, fuel)) = line
            .strip_prefix(PROFILE_LINE)
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        if let (Ok(index), Ok(fuel)) = (
            u32::from_str_radix(index, 16),
            u64::from_str_radix(fuel, 16),
        ) {
            *profile.entry(index).or_insert(0) += fuel;
        }
    }
    profile
}

/// Function names by index from the module's `name` section (an unstripped build).
pub fn function_names(wasm: &[u8]) -> std::collections::BTreeMap<u32, String> {
    let mut names = std::collections::BTreeMap::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(Payload::CustomSection(section)) = payload else {
            continue;
        };
        let wasmparser::KnownCustom::Name(reader) = section.as_known() else {
            continue;
        };
        for subsection in reader {
            if let Ok(wasmparser::Name::Function(map)) = subsection {
                for naming in map.into_iter().flatten() {
                    names.insert(naming.index, naming.name.to_owned());
                }
            }
        }
    }
    names
}

/// Calls the callback `index` with its parameters, then the report; returns its result.
fn wrapper_function(index: u32, params: u32, report: u32) -> Function {
    let mut f = Function::new([]);
    for param in 0..params {
        f.instruction(&Instruction::LocalGet(param));
    }
    f.instruction(&Instruction::Call(index));
    f.instruction(&Instruction::Call(report));
    f.instruction(&Instruction::End);
    f
}

/// The fuel of the `fuel:` lines in `lines` (a plugin's logs), summed.
pub fn fuel_in_logs(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(FUEL_LINE))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .sum()
}

/// The `fuel:` lines in `lines`.
pub fn fuel_lines(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|line| line.starts_with(FUEL_LINE))
        .count()
}
