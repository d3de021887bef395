"""Makes the shared test-support modules in this folder (``official_allinone``, ``fake_msrvtt``,
``tiny_recipe``) importable from every test folder."""
