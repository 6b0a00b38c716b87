//! The Identity service: who we are, what the whole plugin can do, and
//! whether the Docker plugin behind us answers.

use std::sync::Arc;

use dory_core::{Scope, error_chain};
use tonic::{Request, Response, Status};

use crate::driver::CsiDriver;
use crate::proto::identity_server::Identity;
use crate::proto::plugin_capability::{Service, Type, service};
use crate::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse,
    PluginCapability, ProbeRequest, ProbeResponse,
};

/// Identity, served by every instance.
pub struct IdentityService {
    driver: Arc<CsiDriver>,
}

impl IdentityService {
    /// The service over `driver`.
    pub fn new(driver: Arc<CsiDriver>) -> Self {
        Self { driver }
    }
}

fn service(kind: service::Type) -> PluginCapability {
    PluginCapability { r#type: Some(Type::Service(Service { r#type: kind as i32 })) }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver.name.clone(),
            vendor_version: crate::VERSION.to_owned(),
            manifest: [("backend".to_owned(), self.driver.settings.backend.backend().to_owned())].into(),
        }))
    }

    /// The same set from every instance: the controller service, and
    /// accessibility constraints when the plugin's volumes are node-local.
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = vec![service(service::Type::ControllerService)];
        if self.driver.scope().await? == Scope::Local {
            capabilities.push(service(service::Type::VolumeAccessibilityConstraints));
        }
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities }))
    }

    /// Ready only when the plugin answers; a plugin that does not is "not
    /// ready" (OK with `ready=false`), which keeps the sidecars waiting and
    /// makes livenessprobe report the container unhealthy.
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let ready = match self.driver.backend.capabilities().await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %error_chain(&err), "probe: the plugin does not answer");
                false
            }
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
