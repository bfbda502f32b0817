//! `/proc/buddyinfo`: free blocks per order, one `Node N, zone NAME c0 c1 …` line per zone
//! (order 0 = single pages).

use anyhow::{bail, Result};

use super::parse_u64;

/// One zone: (node, zone, free blocks by order).
pub type Zone<'a> = (&'a str, &'a str, Vec<u64>);

/// Every zone. Strict: a line that is not `Node N, zone NAME` followed by at least one count,
/// or with a non-numeric node or count, is an error quoting it.
pub fn parse(text: &str) -> Result<Vec<Zone<'_>>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut it = line.split_ascii_whitespace();
        let (Some("Node"), Some(node), Some("zone"), Some(zone)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            bail!("line {line:?}: expected `Node N, zone NAME counts...`");
        };
        let Some(node) = node.strip_suffix(',') else {
            bail!("line {line:?}: node without a comma");
        };
        parse_u64(node, line)?;
        let counts = it.map(|f| parse_u64(f, line)).collect::<Result<Vec<_>>>()?;
        if counts.is_empty() {
            bail!("line {line:?}: no counts");
        }
        out.push((node, zone, counts));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's /proc/buddyinfo (one node, 11 orders; lines end in a space).
    const BUDDYINFO: &str = "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n\
Node 0, zone    DMA32   6228   5079   3626   2121   2140   1222    526    320    144     67    235 \n\
Node 0, zone   Normal 103073  70419  18521   1494    758    118     36     17      8      1      0 \n";

    #[test]
    fn parses_every_zone() {
        let z = parse(BUDDYINFO).unwrap();
        assert_eq!(z.len(), 3);
        assert_eq!(z[0].1, "DMA");
        assert_eq!(z[0].2[10], 3);
        assert_eq!(
            z[2],
            (
                "0",
                "Normal",
                vec![103073, 70419, 18521, 1494, 758, 118, 36, 17, 8, 1, 0]
            )
        );
        let z = parse(
            "Node 0, zone      DMA      0      0      1 \nNode 1, zone   Normal    240     74\n",
        )
        .unwrap();
        assert_eq!(
            z,
            vec![("0", "DMA", vec![0, 0, 1]), ("1", "Normal", vec![240, 74])]
        );
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "Node 0, zone DMA",
            "Node 0 zone DMA 1 2",
            "Node x, zone DMA 1",
            "Nod 0, zone DMA 1",
            "Node 0, zone DMA 1 -2",
            "Node 0, zone",
        ] {
            assert_err_quotes(parse(&format!("{bad}\n")), bad);
        }
    }
}
