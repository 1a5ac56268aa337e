from ragprep.vcf import read_panel
from stores import open_store


def test_store_matches_panel(panel_vcf, store_path):
    panel = read_panel(str(panel_vcf))
    store = open_store(store_path)
    assert store.is_complete
    assert (store.positions == panel.positions).all()
    assert store.n_haplotypes == panel.n_haplotypes
