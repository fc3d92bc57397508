// Attribute names for people: the NDE (DICONDE) names of pacs/diconde/attributes.csv and DICOM
// keywords for the rest, from data/attributes.json (generated; see tests/support/browser.py).

let loading = null;

/** "MaterialThickness" -> "Material Thickness" */
export function spaced(keyword) {
  return String(keyword || "")
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1 $2");
}

export function ndeNames() {
  if (!loading) {
    loading = fetch(new URL("../data/attributes.json", import.meta.url))
      .then((r) => {
        if (!r.ok) throw new Error(`attribute names: ${r.status}`);
        return r.json();
      })
      .then((data) => {
        const byColumn = {};
        for (const entry of Object.values(data.nde)) byColumn[entry.column] = entry.name;
        return {
          byColumn,
          nde: data.nde,
          keyword: (tag) => data.keywords[tag] || (data.nde[tag] && data.nde[tag].keyword) || "",
          /** The name to show: the NDE name where DICONDE gives one, else the keyword spelled out. */
          label: (tag) => (data.nde[tag] ? data.nde[tag].name : spaced(data.keywords[tag]) || (parseInt(tag.slice(0, 4), 16) % 2 ? "Private" : "Unknown")),
        };
      })
      .catch((error) => {
        loading = null;
        throw error;
      });
  }
  return loading;
}
