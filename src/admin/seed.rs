//! `flashsale seed`: a demo 12.12 catalog. Safe to run again: existing products keep their
//! stock; every demo sale window is (re)opened from now for two hours.

use std::process::ExitCode;

use chrono::{Duration, Utc};
use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::domain::{Price, ProductName, SaleWindow, Sku, StockDelta, WarehouseName};
use flashsale::error::AppError;
use flashsale::service::catalog;

const PRODUCTS: &[(u32, &str, u64, u64, u32)] = &[
    // sku, name, price, sale price (minor units), per-customer limit
    (1001, "Phone X 256 GB", 699_900, 499_900, 1),
    (1002, "Noise-cancelling headphones", 199_900, 99_900, 2),
    (1003, "Robot vacuum", 299_900, 149_900, 1),
    (1004, "Smart watch", 149_900, 79_900, 2),
];

const WAREHOUSES: &[&str] = &["Shanghai DC", "Shenzhen DC"];

pub async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let state = &AppState::connect(cfg).await?;
    let mut warehouse_ids = Vec::new();
    for name in WAREHOUSES {
        let name = WarehouseName::parse(name)?;
        let id = match catalog::create_warehouse(state, name.clone()).await {
            Ok(w) => w.warehouse_id,
            Err(AppError::AlreadyExists(_)) => {
                sqlx::query_scalar::<_, u32>("SELECT id FROM warehouses WHERE name = ?")
                    .bind(name.as_str())
                    .fetch_one(&state.db)
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        warehouse_ids.push(id);
    }
    let starts = Utc::now();
    let ends = starts + Duration::hours(2);
    for &(sku, name, price, sale_price, limit) in PRODUCTS {
        let sku = Sku::parse(u64::from(sku))?;
        let created = match catalog::create_product(
            state,
            Some(sku),
            &ProductName::parse(name)?,
            Price::parse(price)?,
        )
        .await
        {
            Ok(_) => true,
            Err(AppError::AlreadyExists(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if created {
            for (i, &w) in warehouse_ids.iter().enumerate() {
                let units = if i == 0 { 100 } else { 50 };
                catalog::adjust_stock(state, sku, w, StockDelta::parse(units)?).await?;
            }
        }
        let window = SaleWindow::parse(sale_price, starts, ends, Some(u64::from(limit)))?;
        catalog::put_sale(state, sku, window).await?;
        let p = catalog::get_product(state, sku).await?;
        println!(
            "sku {:>5}  {:<30} price {:>8}  sale {:>8}  available {:>4}  limit {}",
            p.sku, p.name, p.price, sale_price, p.available, limit
        );
    }
    println!(
        "sale window open from {} to {}",
        starts.format("%H:%M:%S"),
        ends.format("%H:%M:%S UTC")
    );
    Ok(ExitCode::SUCCESS)
}
