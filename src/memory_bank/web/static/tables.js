// Table cells and bodies, for every table of the page.

export function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// Fill a table's body with makeRow(row) for each row, or one line saying `empty`.
export function fillTable(table, rows, makeRow, empty) {
  const body = table.tBodies[0];
  body.textContent = "";
  if (!rows.length) {
    const tr = body.insertRow();
    const td = cell(empty, "empty");
    td.colSpan = table.tHead.rows[0].cells.length;
    tr.appendChild(td);
    return;
  }
  for (const row of rows) body.appendChild(makeRow(row));
}
