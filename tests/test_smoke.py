from mailer.articles import ArticleStore


def test_seeds_import_into_a_real_sqlite_file(db, cfg):
    reports = ArticleStore(db, cfg).import_paths([cfg.articles.seed_folder])
    assert sum(r.added for r in reports) > 30
