//! Paging and sorting of lists: `?page=1&page_size=20&sort=field,asc|desc`.

use crate::Invalid;

pub const MAX_PAGE_SIZE: u64 = 100;
pub const DEFAULT_PAGE_SIZE: u64 = 20;

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
        if page > 1_000_000 {
            return Err(Invalid::new("page", "must be at most 1000000"));
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
    pub fn parse(raw: Option<&str>, allowed: &[&'static str], default: Sort) -> Result<Self, Invalid> {
        let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(default);
        };
        let (name, dir) = match raw.split_once(',') {
            Some((name, dir)) => (name.trim(), dir.trim()),
            None => (raw, "asc"),
        };
        let dir = match dir.to_ascii_lowercase().as_str() {
            "asc" => SortDir::Asc,
            "desc" => SortDir::Desc,
            _ => return Err(Invalid::new("sort", "direction must be asc or desc")),
        };
        let field = allowed
            .iter()
            .find(|f| **f == name)
            .ok_or_else(|| Invalid::new("sort", format!("unknown field `{name}`; allowed: {}", allowed.join(", "))))?;
        Ok(Self { field, dir })
    }
}

/// A trimmed piece of text between `min` and `max` characters; used for titles and
/// descriptions everywhere.
pub fn text(field: &str, raw: &str, min: usize, max: usize) -> Result<String, Invalid> {
    let text = raw.trim();
    let chars = text.chars().count();
    if chars < min {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if chars > max {
        return Err(Invalid::new(field, format!("must be at most {max} characters")));
    }
    Ok(text.to_owned())
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
        assert_eq!(Sort::parse(Some("title,DESC"), FIELDS, DEFAULT).unwrap().dir, SortDir::Desc);
        assert_eq!(Sort::parse(None, FIELDS, DEFAULT).unwrap(), DEFAULT);
    }

    #[test]
    fn sort_on_an_unknown_field_names_the_allowed_ones() {
        let err = Sort::parse(Some("password_hash,asc"), FIELDS, DEFAULT).unwrap_err();
        assert_eq!(err.field, "sort");
        assert!(err.message.contains("created_at, price, title"));
        assert!(Sort::parse(Some("price,sideways"), FIELDS, DEFAULT).is_err());
    }
}
