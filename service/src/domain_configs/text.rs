//! The export document as text, YAML or JSON, and back. Both are deterministic (sorted maps,
//! no time in the document, a final newline), so two exports of one state are byte-identical.
//! A document that does not parse or does not fit the schema is an error with its line and
//! column.

use cim_backup_contracts::domain_configs::{CONFIGS_FORMAT, ConfigsDocument};

/// Which text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// The form a file's name says (`.json`; anything else is YAML).
    pub fn of_path(path: &std::path::Path) -> Format {
        if path.extension().is_some_and(|e| e == "json") {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("line {line}, column {column}: {message}")]
    At {
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

pub fn render(doc: &ConfigsDocument, format: Format) -> Result<String, TextError> {
    let mut text = match format {
        Format::Json => {
            serde_json::to_string_pretty(doc).map_err(|e| TextError::Other(e.to_string()))?
        }
        Format::Yaml => {
            serde_saphyr::to_string(doc).map_err(|e| TextError::Other(e.to_string()))?
        }
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

pub fn parse(text: &str, format: Format) -> Result<ConfigsDocument, TextError> {
    let doc: ConfigsDocument = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| TextError::At {
            line: e.line() as u64,
            column: e.column() as u64,
            message: strip_location(&e.to_string()),
        })?,
        Format::Yaml => serde_saphyr::from_str(text).map_err(|e| match e.location() {
            Some(at) => TextError::At {
                line: at.line(),
                column: at.column(),
                message: yaml_message(&e.to_string()),
            },
            None => TextError::Other(e.to_string()),
        })?,
    };
    if doc.format != CONFIGS_FORMAT {
        return Err(TextError::Other(format!(
            "format is {:?}; this tool reads {CONFIGS_FORMAT:?}",
            doc.format
        )));
    }
    Ok(doc)
}

/// serde-saphyr's message without its `error: line L column C: ` lead and the source excerpt
/// it draws below (the location is given apart).
fn yaml_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((lead, rest)) if lead.starts_with("line ") => rest.to_owned(),
        _ => first.to_owned(),
    }
}

/// A parser's message without the location it appends (given apart).
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_backup_contracts::domain_configs::{
        DomainTopology, EntriesExport, EntryValue, StreamExport,
    };
    use serde_json::json;

    fn doc() -> ConfigsDocument {
        let mut t = DomainTopology::default();
        t.streams.insert(
            "DOMAIN_GRAPH_EVENTS".into(),
            StreamExport {
                config: json!({"name": "DOMAIN_GRAPH_EVENTS", "subjects": ["graph.>"], "max_age": 0}),
                consumers: [("p".to_owned(), json!({"durable_name": "p", "ack_policy": "explicit"}))]
                    .into(),
            },
        );
        t.config_entries = Some(EntriesExport {
            bucket: "CIM_DOMAIN_CONFIG".into(),
            prefix: "graph.".into(),
            entries: [
                ("graph.a".to_owned(), EntryValue::Text("{\"x\":1}".into())),
                (
                    "graph.b".to_owned(),
                    EntryValue::Binary {
                        base64: "AP8=".into(),
                    },
                ),
            ]
            .into(),
        });
        ConfigsDocument {
            format: CONFIGS_FORMAT.into(),
            domains: [("graph".to_owned(), t)].into(),
        }
    }

    #[test]
    fn both_forms_read_back_to_the_same_document_and_render_the_same_bytes() {
        for format in [Format::Yaml, Format::Json] {
            let text = render(&doc(), format).unwrap();
            assert_eq!(parse(&text, format).unwrap(), doc(), "{format:?}:\n{text}");
            assert_eq!(
                render(&parse(&text, format).unwrap(), format).unwrap(),
                text
            );
        }
    }

    #[test]
    fn a_schema_error_names_its_line_and_column() {
        let text = "format: cim-backup-domain-configs/1\ndomains:\n  graph:\n    streamz: {}\n";
        match parse(text, Format::Yaml) {
            Err(TextError::At {
                line,
                column,
                message,
            }) => {
                assert_eq!(line, 4, "{message}");
                assert!(column >= 5, "{column}: {message}");
                assert!(message.contains("streamz"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match parse("{\"format\": 1}", Format::Json) {
            Err(TextError::At {
                line: 1, column, ..
            }) => assert!(column > 1),
            other => panic!("{other:?}"),
        }
    }
}
