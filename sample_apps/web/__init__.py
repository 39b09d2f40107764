"""Static file server for the in-browser demo: `python -m sample_apps.web.serve BUNDLE`.

The page itself (index.html, app.js, classifier.js, wordpiece.js) is plain JavaScript; the
Python here only serves it, the bundle's files and onnxruntime-web on 127.0.0.1.
"""
