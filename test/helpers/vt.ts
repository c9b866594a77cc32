/**
 * A minimal terminal for checking what a program left on screen: printable characters, CR, LF
 * (scrolling into a history), and the CSI sequences progress output uses (cursor up A / F, column
 * G, erase K and J); other CSI sequences are ignored. Returns history + screen, trailing blanks cut.
 */
export function renderTerminal(output: string, rows: number, cols: number): string[] {
  const blank = (): string[] => new Array<string>(cols).fill(' ');
  const screen: string[][] = Array.from({ length: rows }, blank);
  const history: string[] = [];
  let r = 0;
  let c = 0;
  const lineFeed = (): void => {
    if (r < rows - 1) r++;
    else {
      history.push(screen.shift()!.join('').trimEnd());
      screen.push(blank());
    }
  };
  for (const m of output.matchAll(/\x1b\[(\??)(\d*)([A-Za-z])|\r|\n|[^]/gu)) {
    const [s, priv, num, cmd] = m;
    if (cmd) {
      if (priv) continue;
      const n = num ? Number(num) : 1;
      if (cmd === 'A') r = Math.max(0, r - n);
      else if (cmd === 'F') [r, c] = [Math.max(0, r - n), 0];
      else if (cmd === 'G') c = n - 1;
      else if (cmd === 'K') {
        const mode = num ? Number(num) : 0;
        for (let j = mode === 0 ? c : 0; j < cols && mode !== 1; j++) screen[r]![j] = ' ';
      } else if (cmd === 'J') {
        for (let j = c; j < cols; j++) screen[r]![j] = ' ';
        for (let k = r + 1; k < rows; k++) screen[k] = blank();
      }
    } else if (s === '\r') c = 0;
    else if (s === '\n') lineFeed();
    else if (c < cols) screen[r]![c++] = s;
  }
  return [...history, ...screen.map((l) => l.join('').trimEnd())];
}
