"""A PACS in and out over DICOMweb (QIDO-RS, WADO-RS, STOW-RS), on ``dicomweb-client``.

* :mod:`ragsam.pacs.credentials`: credentials from the environment or a private file.
* :mod:`ragsam.pacs.client`: :class:`~ragsam.pacs.client.Pacs`, the connection, one-line errors.
* :mod:`ragsam.pacs.cache`: fetched instances kept on disk by SOP Instance UID.
* :mod:`ragsam.pacs.series`: find, fetch and check a CT series of a study.
* :mod:`ragsam.pacs.segment`: ``pacs segment`` (fetch -> segment / predict -> DICOM SEG -> store).
* :mod:`ragsam.pacs.support`: ``pacs add-support`` (a corrected SEG -> support bank).

``dicomweb-client`` and ``requests`` are imported inside the functions that talk to a server.
"""
