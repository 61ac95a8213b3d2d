"""Checks that a page is readable, shared by the browser tests (test_report.py, test_serve.py):
WCAG 2 contrast of every visible text against its composited background, no horizontal overflow
at a phone's width, one number format per table column, and screenshots at given widths.
Each check runs in the page through a tests/cdp.py Browser."""
import io
import json
import time

import numpy as np

AA = 4.5   # WCAG 2 AA, normal text

# the lowest contrast of any visible text under ROOT: [ratio, where, texts checked]. The text colour
# (an SVG text's fill) is composited over the element's backgrounds up to the first opaque one,
# and faded by the elements' opacity.
_CONTRAST = r"""(function(root){
 function rgba(s){var m=(s||'').match(/rgba?\(([^)]+)\)/); if(!m) return [0,0,0,0];
   var p=m[1].split(',').map(parseFloat); return [p[0],p[1],p[2],p.length>3?p[3]:1];}
 function bg(el){var layers=[]; for(var e=el;e;e=e.parentElement){var c=rgba(getComputedStyle(e).backgroundColor);
   if(c[3]>0) layers.push(c); if(c[3]>=1) break;}
   var r=[255,255,255]; for(var i=layers.length-1;i>=0;i--){var c=layers[i];
   r=[0,1,2].map(function(k){return c[k]*c[3]+r[k]*(1-c[3]);});} return r;}
 function opacity(el){var o=1; for(var e=el;e;e=e.parentElement) o*=parseFloat(getComputedStyle(e).opacity); return o;}
 function lum(c){var a=c.map(function(v){v/=255;return v<=0.03928?v/12.92:Math.pow((v+0.055)/1.055,2.4);});
   return 0.2126*a[0]+0.7152*a[1]+0.0722*a[2];}
 var worst=[99,''], n=0;
 document.querySelectorAll(root+', '+root+' *').forEach(function(el){
   if(!Array.from(el.childNodes).some(function(t){return t.nodeType===3&&t.textContent.trim();})) return;
   if(!el.getClientRects().length) return;
   var st=getComputedStyle(el), f=rgba(el instanceof SVGElement ? st.fill : st.color), b=bg(el), o=f[3]*opacity(el);
   var fc=[0,1,2].map(function(k){return f[k]*o+b[k]*(1-o);});
   var L1=lum(fc), L2=lum(b), r=(Math.max(L1,L2)+0.05)/(Math.min(L1,L2)+0.05); n++;
   if(r<worst[0]) worst=[r, el.tagName+'.'+el.className+': '+el.textContent.slice(0,30)];});
 return [worst[0], worst[1], n];})(%s)"""

# what sticks out of the viewport sideways under ROOT (an element inside a scroll box that fits is
# fine: the page itself does not scroll sideways): [page scrollWidth, viewport width, first few, count]
_OVERFLOW = r"""(function(root){
 var W=document.documentElement.clientWidth, bad=[];
 function inScrollBox(e){for(var a=e.parentElement;a&&a!==document.documentElement;a=a.parentElement){
   var o=getComputedStyle(a).overflowX; if(o==='auto'||o==='scroll'||o==='hidden'){var r=a.getBoundingClientRect();
   return r.left>=-0.5&&r.right<=W+0.5;}} return false;}
 document.querySelectorAll(root+', '+root+' *').forEach(function(e){var r=e.getBoundingClientRect();
   if(!r.width||(r.left>=-0.5&&r.right<=W+0.5)||inScrollBox(e)) return;
   bad.push(e.tagName+'.'+(typeof e.className==='string'?e.className:'')+' ['+Math.round(r.left)+', '+Math.round(r.right)+']');});
 return [document.documentElement.scrollWidth, W, bad.slice(0,5), bad.length];})(%s)"""

# each visible table's columns: the format of every number cell (header text, then the formats seen)
_FORMATS = r"""(function(){
 function kind(t){t=t.trim(); if(!t||t==='\u2013'||t==='-') return null;
   if(/^-?\d{1,3}(,\d{3})*$|^-?\d+$/.test(t)) return 'integer';
   if(/^-?\d+\.\d+%$|^-?\d+%$/.test(t)) return 'percent:'+((t.split('.')[1]||'%').length-1);
   if(/^-?\d\.\d+e[-+]\d+$/.test(t)) return 'e:'+(t.split('e')[0].split('.')[1].length);
   if(/^-?\d+\.\d+$/.test(t)) return 'fixed:'+t.split('.')[1].length;
   return 'text';}
 var out=[];
 document.querySelectorAll('table').forEach(function(tb){ if(!tb.getClientRects().length||tb.classList.contains('kv')) return;
   var head=Array.from(tb.querySelectorAll('thead th')).map(function(th){return th.textContent.trim();});
   var cols={};
   tb.querySelectorAll('tbody tr').forEach(function(tr){Array.from(tr.children).forEach(function(td,j){
     var k=kind(td.textContent); if(k){(cols[j]=cols[j]||{})[k]=1;}});});
   Object.keys(cols).forEach(function(j){var ks=Object.keys(cols[j]);
     if(ks.filter(function(k){return k!=='text';}).length) out.push([head[j]||('column '+j), ks.sort()]);});});
 return out;})()"""


def contrast(b, root="body"):
    """The lowest text contrast under ``root``: ``(ratio, where, number of texts checked)``."""
    return b.eval(_CONTRAST % json.dumps(root))


def overflow(b, root="body"):
    """``(page scrollWidth, viewport width, the first elements sticking out, how many)``."""
    return b.eval(_OVERFLOW % json.dumps(root))


def column_formats(b):
    """``[(column header, [formats seen])]`` of every visible table's number columns."""
    return b.eval(_FORMATS)


def set_width(b, width, height=1400):
    b.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=width < 500)
    time.sleep(0.3)


def check_readable(b, tmp_path, name, width, root="body", min_texts=10):
    """At ``width`` px: a screenshot saved in ``tmp_path`` (``{name}-{width}px.png``, not blank),
    every text under ``root`` at WCAG AA contrast, nothing under it sticking out sideways, and
    the page not scrolling sideways. Returns the screenshot's path."""
    from PIL import Image

    set_width(b, width)
    png = b.screenshot()
    path = tmp_path / f"{name}-{width}px.png"
    path.write_bytes(png)
    print(f"\nscreenshot: {path}")
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float64)
    assert img.shape[1] == width and img.std() > 10, (name, width, img.shape, img.std())
    ratio, where, n = contrast(b, root)
    print(f"lowest text contrast in {name} at {width} px: {ratio:.2f} ({where})")
    assert n >= min_texts and ratio >= AA, (name, width, ratio, where, n)
    sw, w, bad, n_bad = overflow(b, root)
    assert n_bad == 0 and sw <= w, (name, width, sw, w, bad, n_bad)
    return path
