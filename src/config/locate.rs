//! Where each YAML path sits in the source text, so that every problem found
//! after parsing can still name its line and column.
//!
//! Built from the parser's event stream without expanding aliases, so it costs
//! one cheap pass and cannot be blown up by alias bombs.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Position {
    pub(crate) line: u32,
    pub(crate) column: u32,
}

/// YAML paths (`rules[1].limits[0].rate`) and their positions.
#[derive(Debug, Default)]
pub(crate) struct SourceMap {
    by_path: HashMap<String, Position>,
    /// Every node in document order, for finding the path at a position.
    in_order: Vec<(Position, String)>,
}

enum Frame {
    Sequence { path: String, next: usize },
    Mapping { path: String, key: Option<String> },
}

impl SourceMap {
    pub(crate) fn build(text: &str) -> Self {
        let mut map = SourceMap::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let position = Position {
                line: span.start.line() as u32,
                column: span.start.col() as u32 + 1,
            };
            let is_node = matches!(
                event,
                Event::Scalar(..)
                    | Event::SequenceStart(..)
                    | Event::MappingStart(..)
                    | Event::Alias(..)
            );
            if is_node {
                // A scalar in key position names the next value rather than being one.
                if let (
                    Some(Frame::Mapping {
                        path,
                        key: key @ None,
                    }),
                    Event::Scalar(text, ..),
                ) = (stack.last_mut(), &event)
                {
                    let full = join_key(path, text);
                    *key = Some(text.to_string());
                    map.record(full, position);
                    continue;
                }
                let path = match stack.last_mut() {
                    None => String::new(),
                    Some(Frame::Sequence { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        map.record(p.clone(), position);
                        p
                    }
                    Some(Frame::Mapping { path, key }) => {
                        // The entry's position is its key's, recorded above.
                        let name = key.take().unwrap_or_else(|| "?".into());
                        join_key(path, &name)
                    }
                };
                match event {
                    Event::SequenceStart(..) => stack.push(Frame::Sequence { path, next: 0 }),
                    Event::MappingStart(..) => stack.push(Frame::Mapping { path, key: None }),
                    _ => {}
                }
            } else if matches!(event, Event::SequenceEnd | Event::MappingEnd) {
                stack.pop();
            }
        }
        map
    }

    fn record(&mut self, path: String, position: Position) {
        self.by_path.entry(path.clone()).or_insert(position);
        self.in_order.push((position, path));
    }

    /// The position of `path`, or of its nearest ancestor that is in the file
    /// (a missing field is reported where its parent is).
    pub(crate) fn position_of(&self, path: &str) -> Position {
        let mut current = path;
        loop {
            if let Some(p) = self.by_path.get(current) {
                return *p;
            }
            match current.rfind(['.', '[']) {
                Some(cut) => current = &current[..cut],
                None => return Position { line: 1, column: 1 },
            }
        }
    }

    /// The path of the last node that starts at or before `position`.
    pub(crate) fn path_at(&self, position: Position) -> Option<&str> {
        let after = self.in_order.partition_point(|(p, _)| *p <= position);
        after.checked_sub(1).map(|i| self.in_order[i].1.as_str())
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
server:
  listen: [\"0.0.0.0:8080\"]
rules:
  - name: a
    limits:
      - { key: ip, rate: 10/s }
      - key: ip
        rate: bad
";

    fn pos(line: u32, column: u32) -> Position {
        Position { line, column }
    }

    #[test]
    fn mapping_entries_point_at_their_key() {
        let m = SourceMap::build(YAML);
        assert_eq!(m.position_of("server.listen"), pos(2, 3));
        assert_eq!(m.position_of("rules[0].limits[1].rate"), pos(8, 9));
    }

    #[test]
    fn flow_collections_are_indexed_too() {
        let m = SourceMap::build(YAML);
        assert_eq!(m.position_of("rules[0].limits[0].rate"), pos(6, 20));
        assert_eq!(m.position_of("server.listen[0]"), pos(2, 12));
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let m = SourceMap::build(YAML);
        assert_eq!(
            m.position_of("rules[0].upstream"),
            m.position_of("rules[0]")
        );
        assert_eq!(m.position_of("nowhere.at.all"), pos(1, 1));
    }

    #[test]
    fn positions_map_back_to_paths() {
        let m = SourceMap::build(YAML);
        assert_eq!(m.path_at(pos(8, 15)), Some("rules[0].limits[1].rate"));
        assert_eq!(m.path_at(pos(4, 5)), Some("rules[0].name"));
    }
}
