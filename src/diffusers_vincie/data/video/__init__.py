"""The video -> sessions build: key frames from videos (:mod:`.frames`), transition annotation (:mod:`.annotate`),
regions of editing from detection and segmentation (:mod:`.regions`) and the resumable sharded build
(:mod:`.build`). Needs ``av`` and ``datasets`` (extra ``data``)."""
