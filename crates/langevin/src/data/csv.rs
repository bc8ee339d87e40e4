//! A small, strict CSV reader and an atomic writer for numeric tables.
//!
//! Format: comma-separated, one row per line (`\n` or `\r\n`). Cells are trimmed of
//! surrounding whitespace and may be wrapped in double quotes (a quoted cell may hold commas;
//! `""` inside quotes is a literal quote; newlines inside quotes are not supported). Blank
//! lines are skipped but still counted in line numbers. The first non-blank line is a header
//! when any of its cells is not a number. Every other cell must be a finite number.
use std::io::Write;
use std::path::Path;

use super::table::{default_columns, Table};
use crate::io::write_atomic;
use crate::{Error, Result};

/// Split one line into cells: unquoted text is trimmed, `"…"` quoting may hold commas and
/// `""` for a literal quote.
fn cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false; // the current cell had a quoted part
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    let finish = |cur: &mut String, quoted: bool| {
        let c = std::mem::take(cur);
        if quoted {
            c
        } else {
            c.trim().to_string()
        }
    };
    while let Some(ch) = chars.next() {
        match ch {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' if in_quotes => in_quotes = false,
            '"' if cur.trim().is_empty() && !quoted => {
                cur.clear();
                quoted = true;
                in_quotes = true;
            }
            ',' if !in_quotes => {
                out.push(finish(&mut cur, quoted));
                quoted = false;
            }
            c if quoted && !in_quotes && c.is_whitespace() => {}
            c => cur.push(c),
        }
    }
    out.push(finish(&mut cur, quoted));
    out
}

/// Load a numeric CSV file; see the module docs for the format. Errors name the file and,
/// for a bad cell, its 1-based line number in the file and column.
pub fn load_csv(path: impl AsRef<Path>) -> Result<Table> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_csv(path, &text)
}

fn parse_csv(path: &Path, text: &str) -> Result<Table> {
    let file_err = |msg: &str| Error::DataFile {
        file: path.to_path_buf(),
        msg: msg.to_string(),
    };
    let cell_err = |row: usize, col: usize, msg: String| Error::DataCell {
        file: path.to_path_buf(),
        row,
        col,
        msg,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();

    let Some(&(_, first)) = lines.peek() else {
        return Err(file_err("empty file: no header and no data rows"));
    };
    let first = cells(first);
    let cols = first.len();
    let columns = if first.iter().any(|c| c.parse::<f64>().is_err()) {
        lines.next();
        first
            .into_iter()
            .enumerate()
            .map(|(j, c)| {
                if c.is_empty() {
                    format!("c{}", j + 1)
                } else {
                    c
                }
            })
            .collect()
    } else {
        default_columns(cols)
    };

    let mut data = Vec::new();
    for (row, line) in lines {
        let cs = cells(line);
        if cs.len() != cols {
            return Err(cell_err(
                row,
                cs.len().min(cols) + 1,
                format!("expected {cols} columns, got {}", cs.len()),
            ));
        }
        for (j, c) in cs.iter().enumerate() {
            let v: f64 = c.parse().map_err(|_| {
                let what = if c.is_empty() {
                    "empty cell".to_string()
                } else {
                    format!("not a number: \"{c}\"")
                };
                cell_err(row, j + 1, what)
            })?;
            if !v.is_finite() {
                return Err(cell_err(row, j + 1, format!("non-finite value \"{c}\"")));
            }
            data.push(v);
        }
    }
    if data.is_empty() {
        return Err(file_err("header but no data rows"));
    }
    Table::new(columns, data)
}

fn quote(name: &str) -> String {
    if name.contains([',', '"']) || name.trim() != name {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}

/// The header line (no newline) for `columns`, quoted where needed; for streaming writers.
pub fn header_line(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// One data line (no newline), values in Rust's shortest round-trip form.
pub fn row_line(row: &[f64]) -> String {
    row.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Write `t` as CSV with a header row of its column names, atomically. Values are written in
/// Rust's shortest round-trip form, so [`load_csv`] reads back exactly the same numbers.
pub fn save_csv(path: impl AsRef<Path>, t: &Table) -> Result<()> {
    let path = path.as_ref();
    let io = |e| Error::io(path, e);
    write_atomic(path, |w: &mut dyn Write| {
        writeln!(w, "{}", header_line(&t.columns)).map_err(io)?;
        for row in t.data.chunks_exact(t.cols) {
            writeln!(w, "{}", row_line(row)).map_err(io)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::scratch_dir;

    fn parse(text: &str) -> Result<Table> {
        parse_csv(Path::new("d.csv"), text)
    }

    fn cell_at(r: Result<Table>) -> (usize, usize, String) {
        match r {
            Err(Error::DataCell { row, col, msg, .. }) => (row, col, msg),
            other => panic!("expected a DataCell error, got {other:?}"),
        }
    }

    #[test]
    fn splits_quoted_cells() {
        assert_eq!(cells(" a , \"b, c\" ,\"d\"\"e\""), ["a", "b, c", "d\"e"]);
        assert_eq!(cells(""), [""]);
        assert_eq!(cells("1,,2"), ["1", "", "2"]);
    }

    #[test]
    fn header_is_detected() {
        let t = parse("x, \"y\"\n1,2\r\n3.5,-4e-1\n\n").unwrap();
        assert_eq!(t.columns, ["x", "y"]);
        assert_eq!(t.data, vec![1.0, 2.0, 3.5, -0.4]);
        let t = parse("1,2\n3,4\n").unwrap();
        assert_eq!(t.columns, ["c1", "c2"]);
        assert_eq!(t.rows, 2);
        let t = parse("\u{feff}a,\n5,6").unwrap();
        assert_eq!(t.columns, ["a", "c2"]);
    }

    #[test]
    fn ragged_row_names_line_and_counts() {
        let (row, col, msg) = cell_at(parse("x,y\n1,2\n3\n"));
        assert_eq!((row, col), (3, 2));
        assert!(msg.contains("expected 2 columns, got 1"), "{msg}");
        let (row, col, _) = cell_at(parse("1,2\n\n3,4,5\n"));
        assert_eq!((row, col), (3, 3), "blank lines still count as file lines");
    }

    #[test]
    fn bad_cells_are_quoted() {
        let (row, col, msg) = cell_at(parse("x,y\n1,2\n3,abc\n"));
        assert_eq!((row, col), (3, 2));
        assert!(msg.contains("\"abc\""), "{msg}");
        let (row, col, msg) = cell_at(parse("1,2\n3,NaN\n"));
        assert_eq!((row, col), (2, 2));
        assert!(msg.contains("non-finite") && msg.contains("NaN"), "{msg}");
        let (_, col, msg) = cell_at(parse("a,b\ninf,1\n"));
        assert_eq!(col, 1);
        assert!(msg.contains("non-finite"), "{msg}");
        let (_, _, msg) = cell_at(parse("a,b\n1,\n"));
        assert!(msg.contains("empty cell"), "{msg}");
        let full = parse("x\n1\nz\n").unwrap_err().to_string();
        assert_eq!(full, "d.csv: row 3, column 1: not a number: \"z\"");
    }

    #[test]
    fn empty_and_header_only_files() {
        for text in ["", "\n \n"] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("d.csv") && e.contains("empty file"), "{e}");
        }
        let e = parse("x,y\n").unwrap_err().to_string();
        assert!(e.contains("header but no data rows"), "{e}");
    }

    #[test]
    fn save_then_load_round_trips_exactly() {
        let dir = scratch_dir("csv");
        let p = dir.join("sub/t.csv");
        let t = Table::new(
            vec!["a,b".into(), "q\"uote".into()],
            vec![0.1, -1e-300, 1.0 / 3.0, 12345.678],
        )
        .unwrap();
        save_csv(&p, &t).unwrap();
        assert_eq!(load_csv(&p).unwrap(), t);
        let e = load_csv(dir.join("missing.csv")).unwrap_err().to_string();
        assert!(e.contains("missing.csv"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
