import { DOMParser, type Element } from '@xmldom/xmldom';
import { DomainXmlError } from './errors';

/** Where one element sits in the source text, so edits can splice the original and leave the rest byte-identical. */
export interface Span {
  name: string;
  /** Index of "<" of the start tag. */
  start: number;
  /** Index just after ">" of the start tag. */
  startTagEnd: number;
  selfClosing: boolean;
  /** Index of "</" of the end tag (equals startTagEnd when self-closing). */
  endTagStart: number;
  /** Index just after the element. */
  end: number;
}

function skipTo(text: string, from: number, marker: string, what: string): number {
  const at = text.indexOf(marker, from);
  if (at < 0) throw new DomainXmlError('XML_MALFORMED', `the domain XML has an unterminated ${what}`);
  return at + marker.length;
}

/** Element spans in document order. Assumes well-formed XML (the DOM parse checks that). */
function scanSpans(text: string): Span[] {
  const spans: Span[] = [];
  const open: Span[] = [];
  let i = 0;
  for (;;) {
    i = text.indexOf('<', i);
    if (i < 0) break;
    if (text.startsWith('<!--', i)) i = skipTo(text, i + 4, '-->', 'comment');
    else if (text.startsWith('<![CDATA[', i)) i = skipTo(text, i + 9, ']]>', 'CDATA section');
    else if (text.startsWith('<?', i)) i = skipTo(text, i + 2, '?>', 'processing instruction');
    else if (text.startsWith('<!', i)) {
      const bracket = text.indexOf('[', i);
      const gt = text.indexOf('>', i);
      i = bracket >= 0 && bracket < gt ? skipTo(text, bracket, ']', 'DOCTYPE') : gt;
      i = skipTo(text, i, '>', 'DOCTYPE');
    } else if (text[i + 1] === '/') {
      const end = skipTo(text, i, '>', 'end tag');
      const span = open.pop();
      if (!span) throw new DomainXmlError('XML_MALFORMED', 'the domain XML has an end tag without a start tag');
      span.endTagStart = i;
      span.end = end;
      i = end;
    } else {
      let j = i + 1;
      while (j < text.length && text[j] !== '>') {
        if (text[j] === '"' || text[j] === "'") j = skipTo(text, j + 1, text[j], 'attribute value') - 1;
        j++;
      }
      if (j >= text.length) throw new DomainXmlError('XML_MALFORMED', 'the domain XML has an unterminated start tag');
      const name = /^<([^\s/>]+)/.exec(text.slice(i, j + 1))![1];
      const selfClosing = text[j - 1] === '/';
      const span: Span = { name, start: i, startTagEnd: j + 1, selfClosing, endTagStart: j + 1, end: j + 1 };
      spans.push(span);
      if (!selfClosing) open.push(span);
      i = j + 1;
    }
  }
  return spans;
}

/** A parsed document: DOM for reading (entities decoded), spans for editing the original text. */
export interface ScannedXml {
  text: string;
  root: Element;
  spanOf(el: Element): Span;
}

function elementsInOrder(el: Element, out: Element[]): Element[] {
  out.push(el);
  for (const child of childElements(el)) elementsInOrder(child, out);
  return out;
}

export function childElements(el: Element, name?: string): Element[] {
  const out: Element[] = [];
  for (let n = el.firstChild; n; n = n.nextSibling) {
    if (n.nodeType === 1 && (name === undefined || n.nodeName === name)) out.push(n as Element);
  }
  return out;
}

export function scanXml(text: string): ScannedXml {
  let doc;
  try {
    doc = new DOMParser({
      onError: (level, message) => {
        throw new DomainXmlError('XML_MALFORMED', `the domain XML is not well-formed (${level}): ${message.split('\n')[0]}`);
      },
    }).parseFromString(text, 'text/xml');
  } catch (err) {
    if (err instanceof DomainXmlError) throw err;
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof DomainXmlError) throw cause;
    throw new DomainXmlError('XML_MALFORMED', `the domain XML is not well-formed: ${(err as Error).message.split('\n')[0]}`);
  }
  const root = doc.documentElement;
  if (!root) throw new DomainXmlError('XML_MALFORMED', 'the domain XML has no root element');
  const elements = elementsInOrder(root, []);
  const spans = scanSpans(text);
  if (spans.length !== elements.length || spans.some((s, k) => s.name !== elements[k].nodeName)) {
    throw new DomainXmlError('XML_MALFORMED', 'the domain XML could not be mapped back to its text (unsupported construct)');
  }
  const map = new Map<Element, Span>(elements.map((el, k) => [el, spans[k]]));
  return { text, root, spanOf: (el) => map.get(el)! };
}
