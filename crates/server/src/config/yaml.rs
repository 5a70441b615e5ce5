//! A YAML document as a tree of nodes that remember their line, so that every configuration
//! error can name the line of the key it is about. Built on yaml-rust2's event parser.
//!
//! Limits against hostile files: the input size, the nesting depth and the node count are
//! bounded, and aliases (the "billion laughs" vector) are refused.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

pub const MAX_INPUT: usize = 1 << 20;
const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar and whether it was plain (unquoted): a plain `~` or `null` is null.
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// 1-based line; 0 for values that did not come from a file (environment).
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub line: usize,
    pub value: Node,
}

impl Node {
    /// A plain empty value (`key:` with nothing after it) or `~` / `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s, true) if s.is_empty() || s == "~" || s == "null" || s == "Null" || s == "NULL")
    }
}

/// A YAML syntax error with its line.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    if text.len() > MAX_INPUT {
        return Err(SyntaxError {
            line: 0,
            message: format!("the file is larger than {MAX_INPUT} bytes"),
        });
    }
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        nodes: 0,
    };
    b.document()
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    nodes: usize,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, usize), SyntaxError> {
        match self.parser.next_token() {
            Ok((ev, mark)) => Ok((ev, mark.line())),
            Err(e) => Err(SyntaxError {
                line: e.marker().line(),
                message: e.info().to_string(),
            }),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, SyntaxError> {
        let mut root = None;
        loop {
            let (ev, line) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::DocumentStart => {
                    if root.is_some() {
                        return Err(SyntaxError {
                            line,
                            message: "only one YAML document is allowed".into(),
                        });
                    }
                    let (ev, line) = self.next()?;
                    root = Some(self.node(ev, line, 0)?);
                }
                Event::StreamEnd => return Ok(root),
                other => {
                    // Documents without an explicit start marker.
                    root = Some(self.node(other, line, 0)?);
                }
            }
        }
    }

    fn node(&mut self, ev: Event, line: usize, depth: usize) -> Result<Node, SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                line,
                message: format!("more than {MAX_NODES} values"),
            });
        }
        if depth > MAX_DEPTH {
            return Err(SyntaxError {
                line,
                message: format!("nested deeper than {MAX_DEPTH} levels"),
            });
        }
        let value = match ev {
            Event::Scalar(s, style, anchor, _) => {
                no_anchor(anchor, line)?;
                Value::Scalar(s, style == TScalarStyle::Plain)
            }
            Event::Alias(_) => {
                return Err(SyntaxError {
                    line,
                    message: "YAML aliases (*name) are not supported".into(),
                })
            }
            Event::SequenceStart(anchor, _) => {
                no_anchor(anchor, line)?;
                let mut items = Vec::new();
                loop {
                    let (ev, l) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(ev, l, depth + 1)?);
                }
                Value::Seq(items)
            }
            Event::MappingStart(anchor, _) => {
                no_anchor(anchor, line)?;
                let mut entries: Vec<Entry> = Vec::new();
                loop {
                    let (ev, key_line) = self.next()?;
                    if ev == Event::MappingEnd {
                        break;
                    }
                    let key = match self.node(ev, key_line, depth + 1)?.value {
                        Value::Scalar(k, _) => k,
                        _ => {
                            return Err(SyntaxError {
                                line: key_line,
                                message: "a key must be a plain string".into(),
                            })
                        }
                    };
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        return Err(SyntaxError {
                            line: key_line,
                            message: format!(
                                "key '{key}' appears twice (first on line {})",
                                first.line
                            ),
                        });
                    }
                    let (ev, l) = self.next()?;
                    let value = self.node(ev, l, depth + 1)?;
                    entries.push(Entry {
                        key,
                        line: key_line,
                        value,
                    });
                }
                Value::Map(entries)
            }
            other => {
                return Err(SyntaxError {
                    line,
                    message: format!("unexpected YAML event {other:?}"),
                })
            }
        };
        Ok(Node { value, line })
    }
}

fn no_anchor(anchor: usize, line: usize) -> Result<(), SyntaxError> {
    if anchor != 0 {
        return Err(SyntaxError {
            line,
            message: "YAML anchors (&name) are not supported".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept() {
        let doc = parse("a: 1\n\nb:\n  c: [x, y]\n  d:\n").unwrap().unwrap();
        let Value::Map(entries) = doc.value else {
            panic!("a map")
        };
        assert_eq!(entries[0].key, "a");
        assert_eq!(entries[0].line, 1);
        assert_eq!(entries[1].line, 3);
        let Value::Map(inner) = &entries[1].value.value else {
            panic!("a map")
        };
        assert_eq!(inner[0].line, 4);
        assert!(matches!(inner[0].value.value, Value::Seq(ref s) if s.len() == 2));
        assert!(inner[1].value.is_null());
    }

    #[test]
    fn empty_document() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
    }

    #[test]
    fn hostile_input_is_refused() {
        let bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n";
        assert!(parse(bomb).unwrap_err().message.contains("anchors"));
        let deep = format!("{}x{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
        let dup = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(dup.line, 3);
        assert!(dup.message.contains("line 1"));
        let bad = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(bad.line >= 1);
    }

    #[test]
    fn quoted_null_is_a_string() {
        let doc = parse("a: 'null'\nb: null\n").unwrap().unwrap();
        let Value::Map(e) = doc.value else { panic!() };
        assert!(!e[0].value.is_null());
        assert!(e[1].value.is_null());
    }
}
