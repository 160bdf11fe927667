//! Paging and sorting of lists: `?page=1&page_size=20&sort=field,asc|desc`.

use crate::Invalid;

pub const MAX_PAGE_SIZE: u64 = 100;
pub const DEFAULT_PAGE_SIZE: u64 = 20;
pub const MAX_PAGE: u64 = 1_000_000;
pub const TITLE_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 5000;
pub const SEARCH_MAX_CHARS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub page_size: u64,
}

impl PageRequest {
    /// `page` starts at 1; `page_size` is 1..=100.
    pub fn parse(page: Option<u64>, page_size: Option<u64>) -> Result<Self, Invalid> {
        let page = page.unwrap_or(1);
        let page_size = page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if page == 0 {
            return Err(Invalid::new("page", "must be at least 1"));
        }
        if page > MAX_PAGE {
            return Err(Invalid::new("page", format!("must be at most {MAX_PAGE}")));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(Invalid::new("page_size", format!("must be between 1 and {MAX_PAGE_SIZE}")));
        }
        Ok(Self { page, page_size })
    }

    pub fn offset(self) -> u64 {
        (self.page - 1) * self.page_size
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { page: 1, page_size: DEFAULT_PAGE_SIZE }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortDir {
    Asc,
    Desc,
}

impl SortDir {
    pub fn sql(self) -> &'static str {
        match self {
            SortDir::Asc => "ASC",
            SortDir::Desc => "DESC",
        }
    }
}

/// A sort over one whitelisted field. The field is returned as the `&'static str` from the
/// whitelist, never the client's text, so it is safe to put into SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub field: &'static str,
    pub dir: SortDir,
}

impl Sort {
    /// `raw` is exactly `field`, `field,asc` or `field,desc` for a field in `allowed`: the
    /// values [`Sort::choices`] lists for the API spec.
    pub fn parse(raw: Option<&str>, allowed: &[&'static str], default: Sort) -> Result<Self, Invalid> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let (name, dir) = match raw.split_once(',') {
            Some((name, "asc")) => (name, SortDir::Asc),
            Some((name, "desc")) => (name, SortDir::Desc),
            Some(_) => return Err(Invalid::new("sort", "must end in ,asc or ,desc")),
            None => (raw, SortDir::Asc),
        };
        let field = allowed
            .iter()
            .find(|f| **f == name)
            .ok_or_else(|| Invalid::new("sort", format!("must sort by one of {}, not `{name}`", allowed.join(", "))))?;
        Ok(Self { field, dir })
    }

    /// Every accepted value of `sort` for these fields.
    pub fn choices(allowed: &[&str]) -> Vec<String> {
        allowed.iter().flat_map(|f| [f.to_string(), format!("{f},asc"), format!("{f},desc")]).collect()
    }
}

/// A piece of text between `min` and `max` characters, stored trimmed; used for titles and
/// descriptions everywhere. The length counts what the client sent, as the API spec's
/// `maxLength` does; a required text must hold more than white space.
pub fn text(field: &str, raw: &str, min: usize, max: usize) -> Result<String, Invalid> {
    printable(field, raw)?;
    let text = raw.trim();
    if text.chars().count() < min {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if raw.chars().count() > max {
        return Err(Invalid::new(field, format!("must be at most {max} characters")));
    }
    Ok(text.to_owned())
}

/// Refuses control characters other than tab, line feed and carriage return (so NUL,
/// escape, DEL and the C1 range): Postgres cannot store a NUL, and none of them means
/// anything in a title, an email or a search. Refused, not stripped, so what is stored is
/// what was sent. Every JSON string of a request body passes through here.
pub fn printable(field: &str, raw: &str) -> Result<(), Invalid> {
    if raw.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &["created_at", "price", "title"];
    const DEFAULT: Sort = Sort { field: "created_at", dir: SortDir::Desc };

    #[test]
    fn page_defaults_to_the_first_twenty() {
        let page = PageRequest::parse(None, None).unwrap();
        assert_eq!((page.page, page.page_size, page.offset()), (1, 20, 0));
        assert_eq!(PageRequest::parse(Some(3), Some(10)).unwrap().offset(), 20);
    }

    #[test]
    fn page_size_above_one_hundred_is_refused() {
        assert_eq!(PageRequest::parse(None, Some(101)).unwrap_err().field, "page_size");
        assert_eq!(PageRequest::parse(Some(0), None).unwrap_err().field, "page");
    }

    #[test]
    fn sort_accepts_whitelisted_fields_in_either_direction() {
        assert_eq!(
            Sort::parse(Some("price,asc"), FIELDS, DEFAULT).unwrap(),
            Sort { field: "price", dir: SortDir::Asc }
        );
        assert_eq!(Sort::parse(Some("title,desc"), FIELDS, DEFAULT).unwrap().dir, SortDir::Desc);
        assert_eq!(Sort::parse(Some("title"), FIELDS, DEFAULT).unwrap().dir, SortDir::Asc);
        assert_eq!(Sort::parse(None, FIELDS, DEFAULT).unwrap(), DEFAULT);
    }

    #[test]
    fn sort_on_an_unknown_field_names_the_allowed_ones() {
        let err = Sort::parse(Some("password_hash,asc"), FIELDS, DEFAULT).unwrap_err();
        assert_eq!(err.field, "sort");
        assert!(err.message.contains("created_at, price, title"));
        assert!(Sort::parse(Some("price,sideways"), FIELDS, DEFAULT).is_err());
    }

    #[test]
    fn sort_accepts_exactly_its_listed_choices() {
        for choice in Sort::choices(FIELDS) {
            assert!(Sort::parse(Some(&choice), FIELDS, DEFAULT).is_ok(), "{choice}");
        }
        for odd in ["", "price,DESC", " price", "price, asc", "price,"] {
            assert!(Sort::parse(Some(odd), FIELDS, DEFAULT).is_err(), "{odd:?}");
        }
    }

    #[test]
    fn text_refuses_control_characters_but_keeps_line_breaks() {
        assert_eq!(text("title", "a\u{0}b", 1, 10).unwrap_err().message, "must not contain control characters");
        assert!(text("title", "a\u{1b}[31m", 1, 10).is_err());
        assert!(text("title", "a\u{85}", 1, 10).is_err());
        assert_eq!(text("description", "line\nnext\ttab", 0, 20).unwrap(), "line\nnext\ttab");
    }

    #[test]
    fn text_must_hold_more_than_white_space_and_counts_what_was_sent() {
        assert_eq!(text("title", "   ", 1, 10).unwrap_err().message, "must not be empty");
        assert_eq!(text("title", " Phone ", 1, 10).unwrap(), "Phone");
        assert!(text("title", " 1234567890", 1, 10).is_err());
    }
}
