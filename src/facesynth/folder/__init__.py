"""The dataset folder: shards and the manifest (:mod:`.writer`), the columns (:mod:`.schema`, the one place
Features are built), whose folder it is and what is finished (:mod:`.state`), one writer at a time
(:mod:`.lock`), atomic files (:mod:`.files`), and the model inputs a run pins (:mod:`.pins`,
:mod:`.snapshots`). No torch here."""
