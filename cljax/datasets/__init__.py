"""The datasets a run can name (``--dataset``), one file each, registered with
``cljax.registry.register_dataset``::

    @register_dataset("name", params=NameParams)
    def load_name(params: NameParams, config) -> cljax.data.ClassData: ...

A loader returns uint8 images (N, H, W) or (N, H, W, C) and integer class labels for a train and
a test split; the image shape it returns is the one the model and the task program use. ``data_dir="..."``
in the registration says where it reads without ``--data-dir`` (shown in ``cljax run --help``).
"""
