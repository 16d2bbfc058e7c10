//! Aligned text tables for the command line: `streams list`, `streams diff`, `consumers` and
//! `dlq list` all print through [`Table`].
//!
//! A column is left- or right-aligned and either fits its widest cell or has a fixed width. A
//! fixed width is a minimum: a longer cell is printed whole and shifts the rest of its row,
//! rather than being cut, because a truncated stream name or event id is worse than a ragged
//! line. The last column, when left-aligned, is not padded, so lines carry no trailing spaces.

/// How a column lines up its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// How wide a column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// As wide as its widest cell, header included.
    Fit,
    /// At least this many characters.
    Fixed(usize),
}

/// One column: its header, alignment and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    header: &'static str,
    align: Align,
    width: Width,
}

impl Column {
    /// A left-aligned column as wide as its widest cell.
    pub const fn left(header: &'static str) -> Column {
        Column {
            header,
            align: Align::Left,
            width: Width::Fit,
        }
    }

    /// A right-aligned column as wide as its widest cell.
    pub const fn right(header: &'static str) -> Column {
        Column {
            header,
            align: Align::Right,
            width: Width::Fit,
        }
    }

    /// The same column with a fixed (minimum) width.
    pub const fn width(self, width: usize) -> Column {
        Column {
            width: Width::Fixed(width),
            ..self
        }
    }
}

/// A table being filled in, row by row.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    gap: &'static str,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns, cells separated by `gap`.
    pub fn new(gap: &'static str, columns: impl IntoIterator<Item = Column>) -> Table {
        Table {
            columns: columns.into_iter().collect(),
            gap,
            rows: Vec::new(),
        }
    }

    /// Adds a row, one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// The header line and every row, each line ending in a newline.
    pub fn render(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|c| c.header.to_owned()).collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, column)| match column.width {
                Width::Fixed(width) => width,
                Width::Fit => std::iter::once(&header)
                    .chain(&self.rows)
                    .filter_map(|row| row.get(index))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0),
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            self.push_line(&mut out, row, &widths);
        }
        out
    }

    fn push_line(&self, out: &mut String, row: &[String], widths: &[usize]) {
        let last = self.columns.len().saturating_sub(1);
        for (index, ((cell, column), &width)) in
            row.iter().zip(&self.columns).zip(widths).enumerate()
        {
            if index > 0 {
                out.push_str(self.gap);
            }
            match column.align {
                Align::Left if index == last => out.push_str(cell),
                Align::Left => out.push_str(&format!("{cell:<width$}")),
                Align::Right => out.push_str(&format!("{cell:>width$}")),
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_columns_take_the_widest_cell_and_the_last_is_not_padded() {
        let mut table = Table::new("  ", [Column::left("NAME"), Column::left("FIX")]);
        table.row(vec!["ORDER_CREATED".into(), "create".into()]);
        table.row(vec!["X".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "NAME           FIX\nORDER_CREATED  create\nX              -\n"
        );
    }

    #[test]
    fn fixed_columns_pad_to_their_width_and_let_long_cells_through() {
        let mut table = Table::new(
            " ",
            [Column::left("group").width(6), Column::right("n").width(4)],
        );
        table.row(vec!["g".into(), "12".into()]);
        table.row(vec!["a-long-group".into(), "3".into()]);
        assert_eq!(
            table.render(),
            "group     n\ng        12\na-long-group    3\n"
        );
    }

    #[test]
    fn right_alignment_counts_characters_not_bytes() {
        let mut table = Table::new(" ", [Column::left("a"), Column::right("b").width(3)]);
        table.row(vec!["é".into(), "ü".into()]);
        assert_eq!(table.render(), "a   b\né   ü\n");
    }
}
