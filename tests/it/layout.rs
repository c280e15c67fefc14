//! The tree keeps its shape: no file in `src/` over 400 lines of non-test code, no non-test function
//! over 60 lines, the two sinks never importing each other, and the README's layout section naming
//! what is there and nothing that is not. Reads files only (no services). The longest files and
//! functions are printed (`cargo test --test it layout:: -- --nocapture`), so the limits are
//! measured, not guessed.

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 400;
const MAX_FN_LINES: usize = 60;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, as paths relative to the crate root.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(root().join(dir)).expect("a readable directory") {
        let path = dir.join(entry.expect("a directory entry").file_name());
        if root().join(&path).is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source files of `src/` that are not test-only modules (`tests/` folders, `tests.rs`).
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "tests") && !f.ends_with("tests.rs"));
    files.sort();
    files
}

/// The lines before the file's `#[cfg(test)]` module (the whole file without one).
fn non_test_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(path)).expect("a readable source file");
    text.lines().take_while(|l| l.trim() != "#[cfg(test)]").map(str::to_owned).collect()
}

/// `(lines, name, first line)` of each function with a body, from its `fn` line to the closing
/// brace at the same indentation (rustfmt's layout, which `cargo fmt --check` keeps).
fn functions(lines: &[String]) -> Vec<(usize, String, usize)> {
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let signature = trimmed
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some(rest) = signature.strip_prefix("fn ") else { continue };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(open) = (start..lines.len()).find(|&i| {
            let l = lines[i].trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        let opened = lines[open].trim_end();
        if opened.ends_with(';') || opened.ends_with('}') {
            found.push((open - start + 1, name, start + 1));
            continue;
        }
        let closing = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&i| lines[i] == closing) {
            found.push((end - start + 1, name, start + 1));
        }
    }
    found
}

#[test]
fn no_source_file_or_function_outgrows_the_limits() {
    let mut files = Vec::new();
    let mut fns = Vec::new();
    for path in source_files() {
        let lines = non_test_lines(&path);
        for (length, name, line) in functions(&lines) {
            fns.push((length, format!("{}:{line} {name}", path.display())));
        }
        files.push((lines.len(), path.display().to_string()));
    }
    files.sort_by(|a, b| b.cmp(a));
    fns.sort_by(|a, b| b.cmp(a));
    println!("longest files (non-test lines):");
    files.iter().take(8).for_each(|(n, f)| println!("  {n:4} {f}"));
    println!("longest functions (lines):");
    fns.iter().take(8).for_each(|(n, f)| println!("  {n:4} {f}"));
    assert!(fns.len() > 300, "the function scan found only {} functions: is it broken?", fns.len());
    let big_files: Vec<_> = files.iter().filter(|(n, _)| *n > MAX_FILE_LINES).collect();
    assert!(big_files.is_empty(), "files over {MAX_FILE_LINES} non-test lines: {big_files:?}");
    let long_fns: Vec<_> = fns.iter().filter(|(n, _)| *n > MAX_FN_LINES).collect();
    assert!(long_fns.is_empty(), "functions over {MAX_FN_LINES} lines: {long_fns:?}");
}

#[test]
fn the_function_scan_measures_a_known_function() {
    let lines: Vec<String> =
        ["impl X {", "    pub async fn f(", "        a: u8,", "    ) -> u8 {", "        a", "    }", "}"]
            .map(str::to_owned)
            .to_vec();
    assert_eq!(functions(&lines), [(5, "f".to_owned(), 2)]);
}

#[test]
fn the_two_sinks_never_import_each_other() {
    let copy = std::fs::read_to_string(root().join("src/sink/copy.rs")).unwrap();
    let insert = std::fs::read_to_string(root().join("src/sink/insert.rs")).unwrap();
    assert!(!copy.contains("insert::"), "src/sink/copy.rs names the INSERT sink's module");
    assert!(!insert.contains("copy::"), "src/sink/insert.rs names the COPY sink's module");
}

/// The paths the README's `## Layout` block names: the first column of each line; after a comma,
/// a name relative to the first path's folder (`src/event.rs, event/` names `src/event/`).
fn readme_layout() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("\n## Layout\n").nth(1).expect("the README has a ## Layout section");
    let block = section.split("```").nth(1).expect("the layout section holds a code block");
    let mut paths = Vec::new();
    for line in block.lines().skip(1).filter(|l| !l.starts_with(' ') && !l.is_empty()) {
        let column = line.split("  ").next().unwrap();
        let mut names = column.split(", ");
        let first = names.next().unwrap().to_owned();
        let folder = match Path::new(first.trim_end_matches('/')).parent() {
            Some(folder) if !folder.as_os_str().is_empty() => format!("{}/", folder.display()),
            _ => String::new(),
        };
        paths.extend(names.map(|n| format!("{folder}{n}")));
        paths.push(first);
    }
    paths
}

#[test]
fn the_readme_layout_names_what_the_tree_holds_and_nothing_else() {
    let named = readme_layout();
    let missing: Vec<_> = named.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(missing.is_empty(), "the README's layout names paths that do not exist: {missing:?}");
    // Every entry of src/ and every top-level folder is named, itself or by a path inside it.
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let entry = entry.unwrap();
        let slash = if entry.path().is_dir() { "/" } else { "" };
        entries.push(format!("src/{}{slash}", entry.file_name().to_string_lossy()));
    }
    let tracked = std::process::Command::new("git").args(["ls-files"]).current_dir(root()).output().unwrap();
    let tracked = String::from_utf8(tracked.stdout).unwrap();
    let mut folders: Vec<String> = tracked
        .lines()
        .filter_map(|f| f.split_once('/').map(|(top, _)| format!("{top}/")))
        .filter(|f| !f.starts_with('.') && f != "src/")
        .collect();
    folders.dedup();
    entries.extend(folders);
    let unnamed: Vec<_> = entries
        .iter()
        .filter(|e| !named.iter().any(|n| n == *e || (e.ends_with('/') && n.starts_with(e.as_str()))))
        .collect();
    assert!(unnamed.is_empty(), "the README's layout does not name: {unnamed:?}");
}
